"""The HTML report opened in a real headless Chromium: loads cleanly, every chart decodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import console_errors, screenshot, start_chrome

from training.config import load_config
from training.generate import write_demo
from training.pipeline import train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of the demo config trained on 3,000 generated customers."""
    data = tmp_path_factory.mktemp("demo")
    write_demo(data, n_customers=3000, seed=9)
    out = tmp_path_factory.mktemp("artifacts")
    config = load_config(
        ROOT / "examples" / "demo.toml", {"data_dir": str(data), "output": str(out)}
    )
    return train(config, environ={}).html_report_path


@pytest.fixture(scope="module")
def chrome():
    driver = start_chrome()
    yield driver
    driver.quit()


def test_report_opens_without_console_errors_and_every_chart_renders(report, chrome):
    chrome.get(report.as_uri())
    assert chrome.execute_script("return document.readyState") == "complete"
    images = chrome.execute_script(
        "return Array.from(document.querySelectorAll('img.chart')).map("
        "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    # 12 charts: the demo history has a control arm, so the Qini chart is drawn too
    assert len(images) == 12
    for alt, complete, width, height in images:
        assert complete and width > 200 and height > 100, alt
    assert console_errors(chrome) == []
    assert chrome.find_element("css selector", "#comparison tr.served").text.startswith(
        "K-Means (served)"
    )
    shot = screenshot(chrome, "report")
    assert shot.stat().st_size > 50_000
