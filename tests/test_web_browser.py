"""The event browser in a real browser (SPEC §9): headless Chromium from the Debian packages,
driven by selenium, on SQLite and Postgres. Every page loads and links to the others, a new event
appears without a reload, hostile stored strings show as text and never run, an allowed action is
done through the page's own button once confirmed, and the page breaks none of its
Content-Security-Policy. Screenshots of the events and processors pages are saved
(tests/web_support.py: SCREENSHOTS).

Skipped only when Chromium, its driver or selenium is missing; with CI=true that is a failure.
"""

from __future__ import annotations

import urllib.parse

import pytest

import eventsourcery as es
from tests.web_support import (
    HOSTILE,
    SCREENSHOTS,
    HostileEvent,
    Note,
    chromium,
    seed_hostile,
    serving,
)
from tests.web_support import target as target  # the fixture

#: Bound on every wait for the page (only reached when something is wrong).
PAGE_WAIT = 15


@pytest.fixture(scope="module")
def driver():
    session = chromium()
    try:
        yield session
    finally:
        session.quit()


def wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, PAGE_WAIT, poll_frequency=0.05).until(condition, message)


def css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def shown(text: str) -> str:
    """``text`` as the page shows it: control and direction characters as \\xNN and \\uNNNN."""
    return "".join(
        f"\\x{ord(c):02x}"
        if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
        else f"\\u{ord(c):04x}"
        if c in "\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
        else c
        for c in text
    )


def assert_nothing_ran(driver) -> None:
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert css(driver, "img") == [] and css(driver, "main script") == []  # no markup made from data


def assert_no_policy_violation(driver) -> None:
    messages = [entry["message"] for entry in driver.get_log("browser")]
    assert not [m for m in messages if "Content Security Policy" in m or "Refused to" in m], (
        messages
    )


def click(driver, selector: str) -> None:
    """Click the first element ``selector`` finds (found again if the page replaced it)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(d) -> bool:
        try:
            found = css(d, selector)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False

    wait(driver, clicked, f"a click on {selector}")


def text(driver, selector: str) -> str:
    """The text of the first element ``selector`` finds (read again if the page replaced it)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def read(d) -> str | bool:
        try:
            found = css(d, selector)
            return found[0].text if found else False
        except StaleElementReferenceException:
            return False

    return wait(driver, read, f"the text of {selector}")


def visit(driver, url: str, ready: str) -> None:
    driver.get(url)
    wait(driver, lambda d: css(d, ready), f"{ready} on {url}")


def test_every_page_loads_links_to_the_others_updates_live_and_shows_hostile_data_as_text(
    target, driver, request
) -> None:
    url, store = target
    backend = request.node.callspec.params["target"]
    stored = seed_hostile(
        store
    )  # events 1 (hostile) and 2; a processor failing at 2 with a hostile error
    [caused] = store.sink(
        Note(aggregate_id="child", n=3, causation_id=stored[0].uuid, correlation_id=stored[0].uuid)
    )
    for n in range(4, 30):
        store.sink(Note(aggregate_id=f"note-{n % 3}", n=n))
    with serving(url) as server:
        # events, newest first
        visit(driver, server.url, "#event-rows tr")
        rows = css(driver, "#event-rows tr")
        assert [int(r.get_attribute("data-id")) for r in rows] == list(range(29, 0, -1))
        hostile_row = rows[-1].text
        assert shown(HOSTILE).split("\n")[0][:60] in hostile_row.replace("\n", " ")
        assert HostileEvent.type in hostile_row
        assert_nothing_ran(driver)

        # a new event appears without a reload
        driver.execute_script("window.__sameDocument = true")
        [new] = store.sink(Note(aggregate_id="live-one", n=99))
        wait(
            driver,
            lambda d: css(d, f'#event-rows tr[data-id="{new.id}"]'),
            "the new event on the page",
        )
        assert css(driver, "#event-rows tr")[0].get_attribute("data-id") == str(new.id)
        assert driver.execute_script("return window.__sameDocument") is True
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"events-{backend}.png"))

        # filters
        css(driver, "#filter-aggregate")[0].send_keys("live-one")
        click(driver, "#filter-apply")
        wait(
            driver,
            lambda d: (
                "aggregate_id=live-one" in d.current_url and len(css(d, "#event-rows tr")) == 1
            ),
            "the filtered page",
        )

        # one event: follow the link of the hostile one
        visit(driver, server.url, "#event-rows tr")
        click(driver, '#event-rows tr[data-id="1"] td a')
        wait(driver, lambda d: css(d, "#event-body"), "the event page")
        assert driver.current_url.endswith("/events/1")
        body = text(driver, "#event-body")
        assert "<script>window.__pwned = 1</script>" in body
        assert body.count("\n") == 2 and "\u202e" not in body and "\\u202e" in body  # indented JSON
        assert "<script>" in text(driver, "#event-metadata")
        assert [
            a.text
            for a in css(driver, "#caused tr a")
            if a.get_attribute("href").endswith(f"/events/{caused.id}")
        ] == [str(caused.id)]
        assert_nothing_ran(driver)

        # its aggregate
        click(driver, "dl.fields a")
        wait(driver, lambda d: css(d, "#aggregate-rows tr"), "the aggregate page")
        assert urllib.parse.unquote(driver.current_url.split("/aggregates/", 1)[1]) == HOSTILE
        assert text(driver, "#aggregate-id") == shown(HOSTILE).replace("\n", "")
        assert_nothing_ran(driver)

        # the events it caused: the cause's link from the caused event
        visit(driver, server.url.rstrip("/") + f"/events/{caused.id}", "#caused-by tr")
        click(driver, "#caused-by tr td a")
        wait(
            driver,
            lambda d: d.current_url.endswith("/events/1") and css(d, "#event-body"),
            "the cause",
        )

        # processors: the failing one with its hostile error, and the lag chart
        click(driver, "#nav-processors")
        wait(driver, lambda d: css(d, "#processor-table tr.processor"), "the processors page")
        row = text(driver, "#processor-table tr.processor")
        assert "web_hostile_<b>reactor</b>" in row and "failing" in row
        assert "<script>window.__pwned = 1</script>" in row
        assert css(driver, "#processor-table button") == []  # read-only: no actions offered
        lines = (
            "return [...document.querySelectorAll('#lag-chart polyline')]"
            ".map(p => p.getAttribute('points'))"
        )
        wait(
            driver,
            lambda d: [len(points.split()) >= 2 for points in d.execute_script(lines)] == [True],
            "one line of two samples or more in the chart",
        )
        assert text(driver, "#legend") == "web_hostile_<b>reactor</b>"
        assert_nothing_ran(driver)
        driver.save_screenshot(str(SCREENSHOTS / f"processors-{backend}.png"))

        # statistics, and back to the events of one type
        click(driver, "#nav-stats")
        wait(driver, lambda d: css(d, "#types tr td a"), "the statistics page")
        link = [a for a in css(driver, "#types tr td a") if a.text == "webtest.note"][0]
        link.click()
        wait(
            driver,
            lambda d: "type=webtest.note" in d.current_url and css(d, "#event-rows tr"),
            "a type's events",
        )
        assert {r.text.split()[3] for r in css(driver, "#event-rows tr")} == {"webtest.note"}
        click(driver, "#nav-events")
        wait(
            driver,
            lambda d: d.current_url == server.url and css(d, "#event-rows tr"),
            "the events again",
        )
        assert_nothing_ran(driver)
        assert_no_policy_violation(driver)
    for name in (f"events-{backend}.png", f"processors-{backend}.png"):
        assert (SCREENSHOTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_allowed_action_is_done_through_the_pages_button_once_confirmed(target, driver) -> None:
    url, store = target
    seed_hostile(store)  # failing at event 2, position 1
    name = "web_hostile_<b>reactor</b>"

    def position() -> int:
        return {s.name: s.position for s in es.processor_statuses(store)}[name]

    with serving(url, allow_actions=True) as server:
        visit(
            driver,
            server.url.rstrip("/") + "/processors",
            '#processor-table button[data-action="skip"]',
        )
        click(driver, '#processor-table button[data-action="skip"]')
        wait(driver, lambda d: css(d, "#confirm-question"), "the question")
        assert "Skip event 2" in text(driver, "#confirm-question")
        click(driver, "#confirm-no")  # cancelled: nothing sent
        wait(driver, lambda d: not css(d, "#confirm"), "the question gone")
        assert position() == 1
        click(driver, '#processor-table button[data-action="skip"]')
        wait(driver, lambda d: css(d, "#confirm-yes"), "the question")
        click(driver, "#confirm-yes")
        wait(driver, lambda d: "skipped event 2" in text(d, "#action-result"), "the answer")
        assert position() == 2
        wait(
            driver,
            lambda d: not css(d, '#processor-table button[data-action="skip"]'),
            "no more to skip",
        )
        click(driver, '#processor-table button[data-action="reset"]')
        wait(driver, lambda d: css(d, "#confirm-yes"), "the question")
        assert "Reset processor web_hostile_<b>reactor</b>" in text(driver, "#confirm-question")
        click(driver, "#confirm-yes")
        wait(
            driver,
            lambda d: "reset web_hostile_<b>reactor</b>" in text(d, "#action-result"),
            "the answer",
        )
        assert position() == 0
        assert_nothing_ran(driver)
        assert_no_policy_violation(driver)


def test_partitions_and_parked_events_show_and_a_parked_one_is_dropped_from_the_page(
    tmp_path, driver, monkeypatch
) -> None:
    from tests.test_web_api import with_parking

    path = str(tmp_path / "events.db")
    with es.SQLiteEventStore(path) as store:
        seed_hostile(store)
    calls: list = []
    with_parking(monkeypatch, calls)
    with serving(path, allow_actions=True) as server:
        visit(driver, server.url.rstrip("/") + "/processors", "table.partitions tr td")
        partitions = text(driver, "table.partitions")
        assert "1@h" in partitions and "2@h" in partitions
        wait(driver, lambda d: css(d, "table.parked tr td"), "the parked events")
        assert "<script>window.__pwned = 1</script>" in text(driver, "table.parked")
        click(driver, 'table.parked button[data-action="drop-parked"]')
        wait(driver, lambda d: css(d, "#confirm-question"), "the question")
        assert "Drop parked event 3 of scaled" in text(driver, "#confirm-question")
        assert calls == []
        click(driver, "#confirm-yes")
        wait(driver, lambda d: "dropped parked event 3" in text(d, "#action-result"), "the answer")
        assert calls == [("drop", "scaled", 3)]
        assert_nothing_ran(driver)
        assert_no_policy_violation(driver)
