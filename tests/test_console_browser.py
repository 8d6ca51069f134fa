"""The web console in a real browser (Playwright's Python API driving Debian's Chromium, headless)
against real workers: a job shows running then succeeded, a failure shows its error, the event
stream is live, the playground answers, a batch's bar fills, another tenant sees nothing.

Screenshots of the main pages are kept under tests/artifacts/console/ (gitignored). Without
/usr/bin/chromium (``.ci/ensure-chromium`` installs it) or the playwright package these tests skip,
saying which is missing; no bundled browser is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatq.api.app import create_app

from .conftest import ROOT
from .test_api import KEY_A, KEY_B, finished, http, serve, sid, submit
from .test_console import OPERATOR_KEY, console_settings

CHROMIUM = os.environ.get("CHATQ_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 30_000  # ms: the longest any expectation waits

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                               "(pip install -e '.[test]')")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/ensure-chromium (apt-get install chromium) to run the "
                "console's browser tests", allow_module_level=True)
expect = sync_api.expect


@pytest.fixture(scope="module")
def base_url(fleet) -> Iterator[str]:
    with serve(create_app(console_settings(), fleet.settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def logged_in(browser, base_url: str, key: str, landing: str = "/ui/jobs"):
    """A fresh browser context (its own cookies) logged in through the console's form."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT)
    page = context.new_page()
    page.goto("/ui/jobs")
    expect(page).to_have_url(f"{base_url}/ui/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base_url}{landing}")
    return page


@pytest.fixture
def page_a(browser, base_url) -> Iterator:
    page = logged_in(browser, base_url, KEY_A)
    yield page
    page.context.close()


@pytest.fixture
def api_a(base_url) -> Iterator:
    with http(base_url, KEY_A) as c:
        yield c


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_submitted_job_shows_running_then_succeeded_on_the_jobs_page(page_a, api_a):
    job = submit(api_a, "[[stall:3]] My name is Alice", sid("br"))
    row = page_a.locator(f"tr[data-job='{job['job_id']}']")
    expect(row.locator(".status")).to_have_text("running")  # the page refreshes itself, no reload
    shot(page_a, "jobs-running")
    expect(row.locator(".status")).to_have_text("succeeded")
    shot(page_a, "jobs")


def test_the_job_page_follows_the_event_stream_live(page_a, api_a):
    job = submit(api_a, "[[stall:2]] Tell me about Paris", sid("br"))
    page_a.goto(f"/ui/jobs/{job['job_id']}")
    expect(page_a.locator("#events li[data-type='job.started']")).to_have_count(1)
    expect(page_a.locator("#events li[data-type='job.succeeded']")).to_have_count(1)
    expect(page_a.locator("#stream-state")).to_have_attribute("data-ended", "job.succeeded")
    expect(page_a.locator("#job-status")).to_have_text("succeeded")  # the record re-read at the end
    reply = finished(api_a, job["job_id"])["result"]["content"]
    expect(page_a.locator("#reply")).to_have_text(reply)
    shot(page_a, "job")


def test_a_failed_job_shows_its_error(page_a, api_a):
    job = submit(api_a, "[[fault:400]] x", sid("br"))
    assert finished(api_a, job["job_id"])["status"] == "failed"
    page_a.goto("/ui/jobs?status=failed")
    row = page_a.locator(f"tr[data-job='{job['job_id']}']")
    expect(row.locator(".status")).to_have_text("failed")
    expect(row.locator(".detail .error")).to_contain_text("400")
    row.locator("a").first.click()
    expect(page_a.locator("#job-error")).to_contain_text("400")
    expect(page_a.locator("#events li[data-type='job.failed']")).to_have_count(1)


def test_the_playground_answers_and_keeps_the_session(page_a, base_url):
    page_a.goto("/ui/playground")
    page_a.fill("#message", "My name is Alice")
    page_a.click("#send")
    first = page_a.locator("#transcript li.assistant").nth(0)
    expect(first).to_have_attribute("data-ended", "job.succeeded")
    session = page_a.input_value("#session")
    assert session, "the playground keeps the new session's ID for the next message"
    page_a.fill("#message", "What's my name?")
    page_a.click("#send")
    second = page_a.locator("#transcript li.assistant").nth(1)
    expect(second).to_have_attribute("data-ended", "job.succeeded")
    expect(second.locator(".text")).to_contain_text("Alice")
    shot(page_a, "playground")
    page_a.goto(f"/ui/sessions/{session}")
    expect(page_a.locator("#history li.msg")).to_have_count(4)
    shot(page_a, "session")


def test_a_batch_progress_bar_fills(page_a, api_a):
    lines = "".join(f'{{"custom_id": "c{i}", "message": "[[stall:1]] hello {i}"}}\n' for i in range(6)).encode()
    r = api_a.post("/v1/batches", content=lines, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    page_a.goto("/ui/batches")
    listed = page_a.locator(f"tr[data-batch='{batch_id}']")
    expect(listed.locator("progress")).to_have_attribute("value", "6")  # the list refreshes itself too
    expect(listed.locator(".status")).to_have_text("done")
    shot(page_a, "batches")
    page_a.fill("input[name=id]", batch_id)
    page_a.click("text=Show")
    bar = page_a.locator("#batch-progress")
    expect(bar).to_have_attribute("max", "6")
    expect(bar).to_have_attribute("value", "6")  # the panel refreshes until every turn has finished
    expect(page_a.locator("#batch-state")).to_have_text("done")
    shot(page_a, "batch")


def test_the_fleet_page_refreshes(page_a, api_a):
    page_a.goto("/ui/fleet")
    expect(page_a.locator("#throughput")).to_be_visible()
    expect(page_a.locator("#latency")).to_be_visible()
    job = submit(api_a, "[[stall:3]] busy", sid("br"))
    expect(page_a.locator("#fleet-running")).not_to_have_text("0")
    finished(api_a, job["job_id"])
    expect(page_a.locator("#fleet-running")).to_have_text("0")
    # The latency plot draws the finished job's minute: a bar as high as the minute's p95.
    bar = page_a.locator("#latency g.minute[data-minute='0'] rect.p95")
    expect(bar).to_have_count(1)
    assert bar.bounding_box()["height"] > 0
    shot(page_a, "fleet")


def test_another_tenant_does_not_see_the_first_tenants_sessions(browser, base_url, page_a, api_a):
    s = sid("private")
    finished(api_a, submit(api_a, "My name is Carol", s)["job_id"])
    page_a.goto("/ui/sessions")
    expect(page_a.locator("#sessions")).to_contain_text(s)
    page_b = logged_in(browser, base_url, KEY_B)
    try:
        expect(page_b.locator("#tenant")).to_have_text("globex")
        page_b.goto("/ui/sessions")
        expect(page_b.locator("#sessions")).not_to_contain_text(s)
        page_b.goto(f"/ui/sessions/{s}")
        expect(page_b.locator("main")).to_contain_text("Unknown or expired session")
    finally:
        page_b.context.close()


def test_an_operator_switches_between_tenants(browser, base_url, api_a):
    s = sid("op")
    finished(api_a, submit(api_a, "My name is Dora", s)["job_id"])
    page = logged_in(browser, base_url, OPERATOR_KEY, landing="/ui/tenants")
    try:
        expect(page.locator("#tenants tr[data-tenant='acme']")).to_be_visible()
        expect(page.locator("#tenants tr[data-tenant='globex']")).to_be_visible()
        shot(page, "tenants")
        page.goto("/ui/sessions")
        page.select_option("#tenant-choice", "acme")  # the switcher submits itself
        expect(page.locator("#tenant")).to_have_text("acme")
        expect(page).to_have_url(f"{base_url}/ui/sessions")
        expect(page.locator("#sessions")).to_contain_text(s)
        page.select_option("#tenant-choice", "globex")
        expect(page.locator("#tenant")).to_have_text("globex")
        expect(page.locator("#sessions")).not_to_contain_text(s)
    finally:
        page.context.close()
