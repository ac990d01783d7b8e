"""The test harness: what the test modules, the soak run and the benchmark share.

- ``servers``: real uvicorn / gunicorn / daphne processes (``LiveServer``) and the pool that
  shares them (``ServerPool``).
- ``postgres``: a throwaway PostgreSQL cluster and the ``postgres`` fixture.
- ``processes``: stopping a process we started; what ``/proc`` says about one.
- ``wire``: raw HTTP clients for real servers, and parsing what arrives.
- ``responses``: reading and closing in-process responses.
- ``observe``: log records, metric samples, a server's state report.

Nothing is imported here: ``servers``, ``processes``, ``wire`` and ``observe`` import only the
standard library at import time, so ``bench/.venv`` (no pytest) can use them.
"""
