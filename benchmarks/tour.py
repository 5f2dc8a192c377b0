"""Every tab as a first-time visitor sees it, before training anything: screenshots at desktop and phone width.

    python benchmarks/tour.py                 # writes docs/screenshots/tour-*.png and docs/screenshot.png
    python benchmarks/tour.py --out /tmp/t    # somewhere else

Starts `python app.py` on 127.0.0.1, opens a fresh page (the session opens on the shipped worked
example), and on each tab does what a visitor would first do there: Compare waits for the speed
measured on this server, Token maps and Inside a layer draw the example photo "astronaut", Export
builds the PYRA adapter and its ONNX file. Desktop is 1400 px wide, phone 390 px. The first screen
(the Compare tab at desktop width) is also written to <out>/screenshot.png, the picture at the top
of README.md.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.app_server import serve_app
from benchmarks.charts import CHROMIUM_ARGS, chromium_path

WIDTHS = {"desktop": 1400, "phone": 390}
PHOTO = "astronaut"


def open_tab(page, name: str, tries: int = 20) -> None:
    """Click a tab, through Gradio's "More tabs" menu when the screen is too narrow to show it (the tab bar
    settles a moment after the page draws: look again a few times)."""
    for _ in range(tries):
        tabs = page.get_by_role("tab", name=name)
        shown = [tabs.nth(i) for i in range(tabs.count()) if tabs.nth(i).is_visible()]
        if shown:
            shown[0].click()
            return
        more = page.get_by_role("button", name="More tabs")
        if more.count() and more.first.is_visible():
            more.first.click()
            item = page.locator(".overflow-dropdown button", has_text=name)
            if item.count() and item.first.is_visible():
                item.first.click()
                return
            page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    raise AssertionError(f"no tab {name!r} to click on the page")


def pick_photo(page, prefix: str) -> None:
    from playwright.sync_api import expect

    page.locator(f"#{prefix}-photo input").first.click()
    page.get_by_role("option", name=PHOTO).click()
    expect(page.locator(f"#{prefix}-image img")).to_be_visible(timeout=60_000)


def visit(page, tab: str) -> None:
    """What a visitor first does on `tab`."""
    from playwright.sync_api import expect

    open_tab(page, tab)
    if tab == "3. Compare":
        expect(page.locator("#level-text")).to_contain_text("measured on this server when you opened", timeout=180_000)
    elif tab == "4. Token maps":
        pick_photo(page, "tm")
        page.get_by_role("button", name="Show token maps").click()
        expect(page.locator("#tm-pyra-layer img")).to_be_visible(timeout=120_000)
        page.locator("#tm-layer input[type=number]").fill("4")
        page.locator("#tm-layer input[type=number]").press("Enter")
    elif tab == "5. Inside a layer":
        pick_photo(page, "il")
        page.get_by_role("button", name="Inspect layer").click()
        expect(page.locator("#il-text")).to_contain_text("tokens in", timeout=120_000)
    elif tab == "6. Insights":
        expect(page.locator("#ins-note")).to_contain_text("Confusion matrix", timeout=60_000)
    elif tab == "7. Export":
        page.get_by_role("button", name="Build adapter zip").click()
        expect(page.locator("#ex-zip")).to_contain_text(".zip", timeout=60_000)
        page.get_by_role("button", name="Build ONNX file").click()
        page.get_by_text("onnxruntime's logits were within").wait_for(timeout=180_000)
    page.wait_for_timeout(2000)  # plots and images settle


TABS = ("1. Data", "2. Train", "3. Compare", "4. Token maps", "5. Inside a layer", "6. Insights", "7. Export")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs",
                        help="writes <out>/screenshots/tour-*.png and <out>/screenshot.png (default docs/)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    shots = args.out / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, serve_app(Path(folder), threads=2) as app, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
        for width_name, width in WIDTHS.items():
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(app.url)
            page.get_by_text("PYRA Studio").first.wait_for(timeout=60_000)
            for tab in TABS:
                visit(page, tab)
                name = tab.split(". ")[1].lower().replace(" ", "-")
                page.screenshot(path=str(shots / f"tour-{tab[0]}-{name}-{width_name}.png"), full_page=True)
                if width_name == "desktop" and tab == "3. Compare":
                    page.screenshot(path=str(args.out / "screenshot.png"), full_page=True)
            page.close()
        browser.close()
    print(f"screenshots in {shots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
