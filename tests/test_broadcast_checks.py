"""The deploy checks of broadcast (``django_flosse/broadcasting/_checks.py``): W009, W010."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.checks import Tags, run_checks
from django.core.checks.registry import registry
from django.test import override_settings

from django_flosse.broadcasting._checks import check_backend_promises, redis_persists
from tests.support.redis import RedisServer, own_redis_server
from tests.support.servers import free_port


def ids(messages: list[object]) -> list[str]:
    return [m.id for m in messages]  # type: ignore[attr-defined]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with own_redis_server() as server:  # its persistence is changed
        yield server


def settings_for(url: str) -> override_settings:
    return override_settings(FLOSSE={"BROADCAST_BACKEND": "redis", "BROADCAST_REDIS_URL": url})


def test_registered_as_a_deploy_check() -> None:
    assert check_backend_promises in registry.get_checks(include_deployment_checks=True)
    assert check_backend_promises not in registry.get_checks()  # plain `check` leaves it out
    assert Tags.compatibility in check_backend_promises.tags  # type: ignore[attr-defined]


def test_the_database_backend_promises_everything_it_is_asked() -> None:
    assert check_backend_promises() == []


@override_settings(FLOSSE={"BROADCAST_BACKEND": "memory", "PERSISTENCE": False})
def test_memory_in_production_is_a_warning() -> None:
    (message,) = check_backend_promises()
    assert message.id == "django_flosse.W009"
    assert "only the streams of the process that publishes it" in message.msg
    found = run_checks(include_deployment_checks=True)
    assert "django_flosse.W009" in ids(found)
    assert "django_flosse.W009" not in ids(run_checks())


def test_redis_without_persistence_is_a_warning(redis: RedisServer) -> None:
    # The test server runs with --save '' --appendonly no: a restart loses everything.
    assert redis_persists(redis.url) is False
    with settings_for(redis.url):
        (message,) = check_backend_promises()
    assert message.id == "django_flosse.W010"
    assert redis.url in message.msg and "flosse-reset" in message.msg


@pytest.mark.parametrize("setting", [("appendonly", "yes"), ("save", "3600 1")])
def test_redis_with_persistence_is_fine(redis: RedisServer, setting: tuple[str, str]) -> None:
    with redis.client() as client:
        client.config_set(*setting)
    assert redis_persists(redis.url) is True
    with settings_for(redis.url):
        assert check_backend_promises() == []


def test_an_unreachable_redis_gives_no_message() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert redis_persists(url) is None
    with settings_for(url):
        assert check_backend_promises() == []


def test_the_password_stays_out_of_the_message(redis: RedisServer) -> None:
    with redis.client() as client:
        client.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{redis.port}/0"
    with settings_for(url):
        (message,) = check_backend_promises()
    assert "s3cret" not in message.msg and "***" in message.msg
