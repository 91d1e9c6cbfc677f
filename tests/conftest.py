"""Shared fixtures.

``store`` runs a test once per backend in ``STORE_FACTORIES``; each run starts
from an empty store whose ids start at 1.
"""

from __future__ import annotations

import itertools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

import eventsourcery as es  # noqa: E402
from tests import events  # noqa: E402,F401  (registers the shared event classes)


def _memory_store(path: pathlib.Path):
    return es.MemoryEventStore()


def _sqlite_store(path: pathlib.Path):
    return es.SQLiteEventStore(path)


def _postgres_store(path: pathlib.Path):
    """A PostgresEventStore in a fresh schema of its own (tests/pg_support.py) on the test server
    ($EVENTSOURCERY_TEST_POSTGRES or postgresql://postgres@127.0.0.1:5432/test); skips when the
    server is unreachable, fails instead when CI=true."""
    from tests.pg_support import postgres_store

    return postgres_store(path)


#: name -> factory(path) returning a new, *empty* store (ids start at 1).
#: ``path`` is a fresh file path under the test's tmp_path that file-based
#: stores may use; other stores ignore it.
STORE_FACTORIES = {
    "memory": _memory_store,
    "sqlite": _sqlite_store,
    "postgres": _postgres_store,
}


@pytest.fixture(params=list(STORE_FACTORIES))
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def db_path(tmp_path) -> pathlib.Path:
    """Where a test's SQLite database file lives (not created)."""
    return tmp_path / "events.db"


@pytest.fixture
def store_factory(store_kind):
    """How ``store`` and ``make_store`` make a store of the current kind (a test module may
    override it, e.g. to drive the stores through the async layer)."""
    return STORE_FACTORIES[store_kind]


@pytest.fixture
def store(store_factory, db_path):
    s = store_factory(db_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def make_store(store_factory, tmp_path):
    """A factory of further empty stores of the current kind, closed after the test."""
    made = []
    counter = itertools.count()

    def make():
        s = store_factory(tmp_path / f"events-{next(counter)}.db")
        made.append(s)
        return s

    yield make
    for s in reversed(made):
        s.close()


def _config_snapshot():
    cfg = es.config
    if hasattr(cfg, "__dict__"):
        return dict(vars(cfg))
    return {name: getattr(cfg, name) for name in getattr(cfg, "__slots__", ())}


@pytest.fixture(autouse=True)
def _restore_config():
    """Whatever a test does to es.config, the next test sees the old values."""
    saved = _config_snapshot()
    yield
    for name, value in saved.items():
        setattr(es.config, name, value)


@pytest.fixture
def runners():
    """Runners in subprocesses of their own (test_runner.RunnerProcess), cleaned up afterwards."""
    from tests.test_runner import RunnerProcess

    started: list[RunnerProcess] = []
    yield lambda workdir, **spec: started.append(RunnerProcess(workdir, **spec)) or started[-1]
    for r in started:
        r.cleanup()
