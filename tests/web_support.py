"""Helpers for the event browser's tests (not a test module): a server in a thread, headless
Chromium from the Debian packages driven by selenium, and hostile data.

The browser tests skip only when Chromium, its driver or selenium is missing, and fail instead when
``CI=true``. Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver: it never downloads
a browser or a driver (selenium-manager is not asked for anything).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import threading
from collections.abc import Iterator

import pytest

import eventsourcery as es
import eventsourcery_web as web
from tests._util import WAIT
from tests.pg_support import IN_CI

CHROMIUM = os.environ.get("EVENTSOURCERY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EVENTSOURCERY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Where the browser tests save their screenshots of the events and processors pages.
SCREENSHOTS = pathlib.Path(
    os.environ.get("EVENTSOURCERY_SCREENSHOTS", "/tmp/eventsourcery-screenshots")
)

#: A string that would run script or make markup if it were ever put into the page as HTML: tags,
#: quotes, an event handler, a terminal escape, a right-to-left override and a newline.
HOSTILE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    "\"'`&amp;\x1b[31m\u202e\n</td></tr>"
)


class HostileEvent(es.Event, type="web<script>window.__pwned = 3</script>\"'"):
    """An event whose type name is markup."""

    text: str = ""


class Note(es.Event, type="webtest.note"):
    n: int = 0


class HostileFailure(es.Reactor):
    """Fails on every event with an error message made of markup."""

    processor_name = "web_hostile_<b>reactor</b>"
    emits_events = ()

    @es.on(Note)
    def _fail(self, event: es.Event) -> None:
        raise RuntimeError(f"failing: {HOSTILE}")


def seed_hostile(store: es.EventStore) -> list[es.Event]:
    """Events whose aggregate id, type name, body strings and metadata values are hostile, and a
    processor failing with a hostile error message."""
    stored = store.sink(
        HostileEvent(aggregate_id=HOSTILE, text=HOSTILE, metadata={"who": HOSTILE, HOSTILE: 1})
    )
    stored += store.sink(Note(aggregate_id="plain", n=1))
    reactor = HostileFailure(store)
    with contextlib.suppress(es.EventProcessingError):
        es.run_processor(reactor, store, error_handler=es.NoRetry())
    return stored


@contextlib.contextmanager
def running_server(store: es.EventStore, **options: object) -> Iterator[web.BrowserServer]:
    """The event browser over ``store`` on a free port of 127.0.0.1, served by a thread, until the
    block ends (then shut down, within a bounded wait)."""
    server = web.make_server(store, port=0, **options)  # type: ignore[arg-type]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        assert not thread.is_alive()


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return (
            f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}: "
            "apt-get install chromium "
            "chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        return f"selenium is not installed ({exc}: pip install -e '.[test]')"
    return None


def chromium():  # -> selenium.webdriver.Chrome
    """A new headless Chromium session (the caller quits it); skips, or fails when CI=true, when
    it is not installed."""
    why = browser_missing()
    if why is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # were selenium-manager asked: no download
    service = Service(executable_path=CHROMEDRIVER)  # a driver given: selenium-manager is not used
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """A store's URL (an SQLite path, or a postgresql:// URL naming a schema of its own), and a
    writable store open on it to fill; the browser opens it again, as ``serve`` does."""
    if request.param == "sqlite":
        path = tmp_path / "events.db"
        store = es.SQLiteEventStore(path)
        url = str(path)
    else:
        from tests.pg_support import postgres_store, store_url

        store = postgres_store()
        url = store_url(store.database.schema)
    try:
        yield url, store
    finally:
        store.close()


@contextlib.contextmanager
def serving(url: str, **options):
    """The browser as ``serve`` runs it: the store opened as the read commands open it."""
    store = es._cli_open_store(url, read_only=True)
    try:
        with running_server(
            store,
            target=url,
            open_for_actions=lambda: es._cli_open_store(url, read_only=False),
            **options,
        ) as server:
            yield server
    finally:
        store.close()
