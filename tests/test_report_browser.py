"""The report page in a real headless Chromium (Debian's package, driven by Playwright).

No console errors, the grid shows, a click opens the detail view, the keyboard moves through
it. A screenshot is kept in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from report_fixtures import make_run

from seedflow.report import write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None,
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    # Anything but a file of the run folder would be the page reaching out: refuse it.
    page.route(lambda url: not url.startswith("file://"),
               lambda route: (problems.append(f"network: {route.request.url}"), route.abort()))
    page.problems = problems
    yield page
    context.close()


def test_grid_shows_and_a_click_opens_the_detail_view(tmp_path: Path, page: Any) -> None:
    run = make_run(tmp_path, size=(512, 384), states={1: "failed", 3: "partial", 5: "cancelled"})
    report = write_report(run)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")

    assert page.locator("table.grid").first.is_visible()
    assert page.locator("th.col-label").first.inner_text().endswith("oil")
    tiles = page.locator("button.tile img")
    assert tiles.count() == 2 * 12 - 2 * 2 - 1  # 12 jobs × 2 images; failed, cancelled: none; partial: 1
    tiles.first.scroll_into_view_if_needed()
    page.wait_for_function("document.querySelector('button.tile img').naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

    page.locator("button.tile").first.click()
    detail = page.locator("#detail")
    assert detail.is_visible()
    assert page.locator("#d-name").inner_text().startswith("oil-fox-1")
    assert "fox in oil style" in page.locator("#d-prompt").inner_text()
    assert page.locator("#d-cmd").inner_text().startswith("seedflow run pipelines/study.yaml")
    assert "req-0000" in page.locator("#d-job").inner_text()
    page.wait_for_function("document.getElementById('big').naturalWidth === 512")
    page.screenshot(path=str(ARTIFACTS / "report-detail.png"))

    page.keyboard.press("ArrowRight")
    assert "image 2 of 2" in page.locator("#d-name").inner_text()
    page.keyboard.press("ArrowRight")  # on to the next cell of the row
    assert page.locator("#d-name").inner_text() == "watercolor-fox-1 · image 1 of 2"
    page.keyboard.press("ArrowDown")  # the same image one row down
    assert page.locator("#d-name").inner_text() == "watercolor-owl-1 · image 1 of 2"
    page.keyboard.press("Escape")
    assert not detail.is_visible()
    assert page.problems == []


def test_a_failed_cell_opens_its_reason_and_the_page_survives_a_reload(
    tmp_path: Path, page: Any
) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"], "subject": ["x", "y"]},
                   states={1: "failed"})
    page.goto(write_report(run).as_uri())
    page.locator("button.nocard").first.click()
    assert "content policy violation" in page.locator("#d-reason").inner_text()
    assert page.locator("#noimg").inner_text() != ""
    # the address names the open job, so a reload (live refresh) brings the view back
    page.reload()
    assert page.locator("#detail").is_visible()
    assert "content policy violation" in page.locator("#d-reason").inner_text()
    assert page.problems == []


def test_a_running_report_reloads_itself(tmp_path: Path, page: Any) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"]}, ended=False, states={1: "running"})
    report = run / "report.html"
    from seedflow.report import build_grid, load_manifest, make_thumbnails, render_html

    manifest = load_manifest(run)
    grid = make_thumbnails(run, build_grid(manifest))
    report.write_text(render_html(manifest, grid, refresh_seconds=1), encoding="utf-8")
    page.goto(report.as_uri())
    assert page.locator("#live").is_visible()
    with page.expect_navigation(timeout=5000):
        pass  # the page reloads by itself within a second
    assert page.problems == []
