"""Settings: one FLOSSE dict over documented defaults, cached, validated."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.test import override_settings

from django_flosse.conf import DEFAULTS, get_config
from django_flosse.events import json_dumps_for


def test_defaults() -> None:
    config = get_config()
    assert config.heartbeat == 15.0
    assert config.json_encoder is DjangoJSONEncoder
    assert config.sync_read_ahead == 16
    assert DEFAULTS["HEARTBEAT"] == 15.0


def test_every_default_may_be_given_explicitly() -> None:
    with override_settings(FLOSSE=dict(DEFAULTS)):
        assert get_config().heartbeat == 15.0


def test_config_is_cached() -> None:
    assert get_config() is get_config()


def test_override_settings_clears_the_cache() -> None:
    before = get_config()
    with override_settings(FLOSSE={"HEARTBEAT": 2}):
        assert get_config().heartbeat == 2.0
        assert get_config().sync_read_ahead == 16  # merged over the defaults
    assert get_config().heartbeat == 15.0
    assert get_config() is not before


@pytest.mark.parametrize(
    ("overrides", "heartbeat"),
    [({"HEARTBEAT": None}, None), ({"HEARTBEAT": 0.5}, 0.5), ({}, 15.0)],
)
def test_heartbeat_values(overrides: dict[str, Any], heartbeat: float | None) -> None:
    with override_settings(FLOSSE=overrides):
        assert get_config().heartbeat == heartbeat


def test_none_flosse_means_defaults() -> None:
    with override_settings(FLOSSE=None):
        assert get_config().heartbeat == 15.0


def test_encoder_may_be_a_class() -> None:
    with override_settings(FLOSSE={"JSON_ENCODER": json.JSONEncoder}):
        assert get_config().json_encoder is json.JSONEncoder
        assert (
            json_dumps_for(get_config().json_encoder)({"é": 1}) == '{"é": 1}'
        )  # UTF-8 stream: no \\u escapes


@pytest.mark.parametrize(
    ("flosse", "message"),
    [
        (
            {"HEARTBAET": 5},
            r"Unknown FLOSSE setting\(s\): HEARTBAET\. Known settings: .*HEARTBEAT, ",
        ),
        ({"HEARTBEAT": 0}, r"FLOSSE\['HEARTBEAT'\] must be a positive number or None; got 0"),
        ({"HEARTBEAT": -1}, r"FLOSSE\['HEARTBEAT'\] must be a positive number"),
        ({"HEARTBEAT": "15"}, r"FLOSSE\['HEARTBEAT'\] must be a positive number"),
        ({"HEARTBEAT": True}, r"FLOSSE\['HEARTBEAT'\] must be a positive number"),
        ({"SYNC_READ_AHEAD": 0}, r"FLOSSE\['SYNC_READ_AHEAD'\] must be an int >= 1.*; got 0"),
        ({"SYNC_READ_AHEAD": 2.0}, r"FLOSSE\['SYNC_READ_AHEAD'\] must be an int >= 1"),
        ({"SYNC_READ_AHEAD": True}, r"FLOSSE\['SYNC_READ_AHEAD'\] must be an int >= 1"),
        ({"JSON_ENCODER": dict}, r"FLOSSE\['JSON_ENCODER'\] must be a json.JSONEncoder subclass"),
        ({"JSON_ENCODER": "json.dumps"}, r"FLOSSE\['JSON_ENCODER'\] must be a json.JSONEncoder"),
        (["HEARTBEAT"], r"settings.FLOSSE must be a dict; got list"),
    ],
)
def test_bad_settings_raise_improperly_configured(flosse: Any, message: str) -> None:
    with override_settings(FLOSSE=flosse), pytest.raises(ImproperlyConfigured, match=message):
        get_config()


def test_encoder_path_that_does_not_import() -> None:
    """A typo in the dotted path must be reported as a settings error naming the setting.

    Fails today: ``conf._encoder`` lets ``import_string``'s ImportError escape.
    """
    with override_settings(FLOSSE={"JSON_ENCODER": "no.such.Encoder"}):
        with pytest.raises(
            ImproperlyConfigured, match=r"FLOSSE\['JSON_ENCODER'\].*no\.such\.Encoder"
        ):
            get_config()
