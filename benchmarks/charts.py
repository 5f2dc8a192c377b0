"""Write a plotly chart as an offline HTML page plus a PNG screenshot of it.

    paths = write_chart(fig, Path("docs/charts/speed_vs_flops"))  # .html and .png

The HTML loads plotly from a `plotly.min.js` beside it (shared by every chart in the
folder), so the page opens without a network. The PNG is a screenshot of that page in
headless Chromium driven by Playwright; Chromium is found at $PYRA_CHROMIUM, /usr/bin/chromium
or `chromium` on PATH.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from plotly.graph_objects import Figure

WIDTH, HEIGHT = 900, 550  # pixels of the PNG
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class PngRendererMissing(RuntimeError):
    """No Chromium or Playwright to render PNGs with; the message says how to get them."""


def write_chart(fig: Figure, path_stem: Path, png: bool = True) -> list[Path]:
    """Write `<path_stem>.html` and, if `png`, `<path_stem>.png`; return the paths written."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    html = path_stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="directory", full_html=True, default_height=f"{HEIGHT}px",
                   config={"displaylogo": False})
    if not png:
        return [html]
    return [html, screenshot(html, path_stem.with_suffix(".png"))]


def chromium_path() -> Path:
    """The Chromium binary to use, or PngRendererMissing."""
    for candidate in (os.environ.get("PYRA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise PngRendererMissing(
        "Chromium is needed to render PNG charts: install it (apt-get install chromium) or set "
        "PYRA_CHROMIUM to its path; or pass --no-png to write the HTML charts only"
    )


def screenshot(html: Path, png: Path, timeout_ms: float = 30_000) -> Path:
    """Render `html` in headless Chromium and save its plot element as `png`."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright  # dev dependency, for PNGs only
    except ImportError:
        raise PngRendererMissing("PNG charts need Playwright: pip install -r requirements-dev.txt, or pass --no-png") from None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            # the page body has an 8 px margin on each side: the plot gets WIDTH x HEIGHT
            page = browser.new_page(viewport={"width": WIDTH + 16, "height": HEIGHT + 16})
            page.goto(html.resolve().as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout_ms)  # drawn
            page.locator(".js-plotly-plot").first.screenshot(path=str(png), timeout=timeout_ms)
        finally:
            browser.close()
    return png
