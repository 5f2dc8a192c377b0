"""The app in a real browser: headless Chromium (system package) driven by Playwright.

Uploads a generated zip, trains the tiny configuration through the UI controls, moves the
compression slider and checks the numbers change; saves a screenshot on the way
($PYRA_SCREENSHOT, or the test's temporary folder).
Needs /usr/bin/chromium (apt-get install chromium); skipped without it unless
PYRA_REQUIRE_BROWSER=1, which turns the skip into a failure (CI).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_app_api import running_app

from benchmarks.app_server import TINY_BACKBONE
from benchmarks.charts import CHROMIUM_ARGS
from benchmarks.tour import TABS, open_tab
from benchmarks.zips import colour_zip

CHROMIUM = Path(os.environ.get("PYRA_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT_ENV = "PYRA_SCREENSHOT"  # where to save the screenshot (e.g. docs/screenshot.png); default: tmp_path
TRAIN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found: install it with `apt-get install -y chromium chromium-driver`"
        if os.environ.get("PYRA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (PYRA_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


SETTLE_TRIES = 3  # a control mounted a moment before (an accordion opening) can take its initial value back once


def _until_it_stays(page, write, read, wanted: str) -> None:
    """Write a value, let the page settle, read it back; again (a few times) if the page put the old one back."""
    for _ in range(SETTLE_TRIES):
        write()
        page.wait_for_timeout(500)
        if read() == wanted:
            return


def set_text(page, box, text: str) -> None:
    """Type into a text box, then check the text stayed."""
    from playwright.sync_api import expect

    expect(box).to_be_editable(timeout=30_000)

    def write() -> None:
        box.fill(text)
        box.blur()

    _until_it_stays(page, write, box.input_value, text)
    expect(box).to_have_value(text)


def set_number(page, elem_id: str, value) -> None:
    """Set a Number (type and commit) or a Slider (move its range input), then check it stayed."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input[type=number]").first
    expect(box).to_be_visible(timeout=30_000)
    slider = page.locator(f"#{elem_id} input[type=range]")

    def write() -> None:
        if slider.count():
            slider.first.fill(str(value))
        else:
            box.fill(str(value))
            box.press("Enter")
            box.blur()

    _until_it_stays(page, write, box.input_value, str(value))
    expect(box).to_have_value(str(value), timeout=10_000)


@pytest.mark.browser
def test_tiny_demo_in_the_browser(browser, tmp_path):
    from playwright.sync_api import expect

    zip_path = colour_zip(tmp_path / "colours", name="colours.zip")[0]
    with running_app(tmp_path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.get_by_text("PYRA Studio").first).to_be_visible(timeout=60_000)

        page.locator("#zip-upload input[type=file]").set_input_files(str(zip_path))
        expect(page.locator("#data-summary")).to_contain_text("3 classes", timeout=60_000)

        page.get_by_role("tab", name="2. Train").click()
        backbone = page.locator("#backbone input").first
        backbone.fill(TINY_BACKBONE)
        backbone.press("Enter")
        set_number(page, "img-size", 32)
        set_number(page, "epochs", 1)
        page.get_by_text("Repeats and measurement").click()
        set_number(page, "num-levels", 2)
        set_number(page, "bench-repeats", 1)
        page.locator("#train-btn").click()
        expect(page.locator("#train-status")).to_contain_text("Done", timeout=TRAIN_TIMEOUT_MS)
        expect(page.locator("#loss-chart .js-plotly-plot")).to_be_visible(timeout=30_000)

        page.get_by_role("tab", name="3. Compare").click()
        level_text, table = page.locator("#level-text"), page.locator("#compare-table")
        expect(level_text).to_contain_text("Level 2 of 2", timeout=30_000)
        expect(table).to_contain_text("PYRA + LoRA")
        at_target = table.inner_text()
        percentages = re.findall(r"\d+\.\d%", at_target)
        assert len(percentages) >= 4, at_target

        page.locator("#level-slider input[type=range]").fill("0")
        expect(level_text).to_contain_text("Level 1 of 2", timeout=30_000)
        expect(table).not_to_have_text(at_target, timeout=30_000)
        uncompressed = table.inner_text()
        assert uncompressed != at_target

        page.locator("#level-slider input[type=range]").fill("1")
        expect(level_text).to_contain_text("Level 2 of 2", timeout=30_000)
        expect(page.locator("#compare-chart .js-plotly-plot")).to_be_visible(timeout=30_000)
        screenshot = Path(os.environ.get(SCREENSHOT_ENV, tmp_path / "screenshot.png"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000


@pytest.mark.browser
def test_closing_the_tab_removes_the_session_directory(browser, tmp_path):
    import time

    from playwright.sync_api import expect

    zip_path = colour_zip(tmp_path / "colours", name="colours.zip", per_class=3)[0]
    work = tmp_path / "work"  # where running_app(tmp_path) keeps the session folders
    with running_app(tmp_path) as url:
        page = browser.new_page()
        page.goto(url)
        page.locator("#zip-upload input[type=file]").set_input_files(str(zip_path))
        expect(page.locator("#data-summary")).to_contain_text("3 classes", timeout=60_000)
        sessions = list(work.glob("session-*"))
        assert len(sessions) == 1 and (sessions[0] / "data").is_dir()
        page.close()
        deadline = time.monotonic() + 60
        while sessions[0].exists():
            assert time.monotonic() < deadline, "the session directory outlived the closed tab"
            time.sleep(0.5)


@pytest.mark.browser
def test_values_over_the_limits_get_the_apps_message_in_the_browser(browser, tmp_path):
    """Typed into the page: an image size over PYRA_MAX_IMG_SIZE and 100 seeds are refused before training,
    in a pop-up naming the field, the limit and the variable."""
    from playwright.sync_api import expect

    with running_app(tmp_path) as url:
        page = browser.new_page(viewport={"width": 390, "height": 900})  # a phone
        page.goto(url)
        expect(page.get_by_text("PYRA Studio").first).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Load sample").click()
        expect(page.locator("#data-summary")).to_contain_text("classes", timeout=60_000)
        page.get_by_role("tab", name="2. Train").click()
        set_number(page, "img-size", 100000)
        page.locator("#train-btn").click()
        toast = page.locator(".toast-body").first
        expect(toast).to_contain_text(
            "image size: 100000 is more than the limit of 448 px (raise PYRA_MAX_IMG_SIZE to allow more)",
            timeout=60_000)
        page.screenshot(path=os.environ.get("PYRA_LIMIT_SCREENSHOT", str(tmp_path / "limit-phone.png")), full_page=True)
        page.locator(".toast-close").first.click()
        set_number(page, "img-size", 0)
        page.get_by_text("Repeats and measurement").click()
        set_text(page, page.get_by_label("Seeds"), ", ".join(map(str, range(100))))
        page.locator("#train-btn").click()
        expect(page.locator(".toast-body").first).to_contain_text("more than the limit of 15 per request",
                                                                   timeout=60_000)
        expect(page.locator("#train-status")).not_to_contain_text("Starting")


@pytest.mark.browser
def test_the_worked_example_works_on_every_tab_before_any_training(browser, tmp_path):
    """A new visitor trains nothing: Compare shows every model's accuracy, Token maps draws an example photo,
    Inside a layer and Export work, each within a minute."""
    from playwright.sync_api import expect

    with running_app(tmp_path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.get_by_text("PYRA Studio").first).to_be_visible(timeout=60_000)
        page.get_by_role("tab", name="3. Compare").click()
        table = page.locator("#compare-table")
        for label in ("LoRA, uncompressed", "ToMe training-free", "ToMe + LoRA", "PYRA + LoRA"):
            expect(table).to_contain_text(label, timeout=60_000)
        expect(page.locator("#level-text")).to_contain_text("Worked example", timeout=60_000)
        assert len(re.findall(r"\d+\.\d% \[\d+\.\d%", table.inner_text())) == 4
        expect(page.locator("#level-text")).to_contain_text("measured on this server when you opened", timeout=120_000)

        page.get_by_role("tab", name="4. Token maps").click()
        page.locator("#tm-photo input").first.click()
        page.get_by_role("option", name="astronaut").click()
        expect(page.locator("#tm-image img")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Show token maps").click()
        for side in ("tome", "pyra"):  # ToMe and PYRA side by side at the same layer, at least 448 px wide
            picture = page.locator(f"#tm-{side}-layer img")
            expect(picture).to_be_visible(timeout=60_000)
            assert picture.evaluate("img => img.naturalWidth") >= 448
        page.get_by_role("button", name="▶ Play through the layers").click()
        expect(page.locator("#tm-layer input[type=number]")).to_have_value("12", timeout=60_000)
        page.screenshot(path=str(tmp_path / "token-maps.png"), full_page=True)

        page.get_by_role("tab", name="5. Inside a layer").click()
        page.locator("#il-photo input").first.click()
        page.get_by_role("option", name="astronaut").click()
        expect(page.locator("#il-image img")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Inspect layer").click()
        expect(page.locator("#il-text")).to_contain_text("tokens in", timeout=60_000)

        page.get_by_role("tab", name="7. Export").click()
        page.get_by_role("button", name="Build adapter zip").click()
        expect(page.locator("#ex-zip")).to_contain_text(".zip", timeout=60_000)


@pytest.mark.browser
def test_no_tab_scrolls_sideways_on_a_phone(browser, tmp_path):
    """At 390 px, the width of a phone, no tab is wider than the screen."""
    from playwright.sync_api import expect

    with running_app(tmp_path) as url:
        page = browser.new_page(viewport={"width": 390, "height": 900})
        page.goto(url)
        expect(page.get_by_text("PYRA Studio").first).to_be_visible(timeout=60_000)
        for tab in TABS:
            open_tab(page, tab)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / f"phone-{tab[0]}.png"), full_page=True)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{tab}: the page is {width} px wide on a 390 px screen"
