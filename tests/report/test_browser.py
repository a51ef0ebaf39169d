"""The report in a real browser: headless Chromium from Debian (``/usr/bin/chromium``,
installed by ``.ci/run``), driven by Playwright for Python.

The page must load with no console errors and no network requests, show every figure
at a non-zero size, have the tables with the expected rows, and not be blank. Skipped,
with the reason, when Playwright or Chromium is missing.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image as mpimg

from bnlab.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report_folders import make_all

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>alert("x")</script>\'&'
# A file name cannot hold "/": the same attack without the closing tag.
EVIL_NAME = '<script>alert("x")\'&'

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[dev]')"
)
if not CHROMIUM.is_file():
    pytest.skip(
        f"Debian's Chromium is not at {CHROMIUM} (.ci/run installs it with apt-get install -y "
        "chromium; it could not here)",
        allow_module_level=True,
    )


# One page load for all checks: under pytest-xdist, separate tests sharing a module
# fixture could start Chromium once per worker.
@pytest.fixture
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The report of one folder of each kind (one with a hostile name), open in Chromium,
    with everything the page did while loading."""
    root = tmp_path_factory.mktemp("report")
    folders = make_all(root)
    evil = folders["lab"].rename(root / f"lab {EVIL_NAME}")
    out = root / "report.html"
    write_report(
        [folders["train"], folders["d2l"], evil, folders["claims"], folders["bench"]],
        out,
        title=EVIL,
    )
    events: dict[str, list[str]] = {"console": [], "errors": [], "requests": [], "dialogs": []}
    # Chromium refuses to run as root inside its sandbox (CI containers run as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.on("console", lambda m: events["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: events["errors"].append(str(e)))
            page.on("request", lambda r: events["requests"].append(r.url))
            page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
            # Anything but the page itself and data: URLs is recorded above and refused here.
            page.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url in (out.as_uri(),) or route.request.url.startswith("data:")
                    else route.abort()
                ),
            )
            page.goto(out.as_uri(), wait_until="load")
            yield {"page": page, "events": events, "url": out.as_uri()}
        finally:
            browser.close()


def test_report_in_headless_chromium(loaded: dict[str, Any]) -> None:
    _loads_without_errors_or_network(loaded)
    _every_figure_loaded(loaded)
    _tables_have_the_expected_rows(loaded)
    _screenshot_is_not_blank(loaded)


def _loads_without_errors_or_network(loaded: dict[str, Any]) -> None:
    events = loaded["events"]
    assert [m for m in events["console"] if m.startswith("error")] == []
    assert events["errors"] == []
    assert events["dialogs"] == []  # the hostile name did not run as a script
    outside = [u for u in events["requests"] if u != loaded["url"] and not u.startswith("data:")]
    assert outside == []
    assert loaded["page"].title() == EVIL  # escaped in the source, shown as text


def _every_figure_loaded(loaded: dict[str, Any]) -> None:
    sizes = loaded["page"].evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert sizes == [[True, 40, 20], [True, 60, 20], [True, 30, 30]]


def _tables_have_the_expected_rows(loaded: dict[str, Any]) -> None:
    # (caption, body rows) of every captioned table, in page order.
    tables = loaded["page"].evaluate(
        """Array.from(document.querySelectorAll('table')).filter(t => t.caption)
            .map(t => [t.caption.textContent, t.tBodies[0].rows.length])"""
    )
    assert tables == [
        ["results", 7],  # the training run's final numbers
        ["per epoch", 3],
        ["LeNet on Fashion-MNIST, the d2l recipe (mean ± std over seeds)", 2],
        ["The book's printed results (d2l-zh 2.0, PyTorch, GPU, one build)", 2],
        ["per arch", 2],
        ["results", 2],  # batchnorm benchmark rows
        ["ratios of medians", 1],
        ["results", 3],  # the newest family benchmark
    ]
    claims = loaded["page"].evaluate(
        "document.querySelector('table.claims').tBodies[0].rows.length"
    )
    assert claims == 3


def _screenshot_is_not_blank(loaded: dict[str, Any]) -> None:
    pixels = mpimg.imread(io.BytesIO(loaded["page"].screenshot()), format="png")
    assert pixels.shape[:2] == (800, 1000)
    assert float(np.var(pixels)) > 0.0
