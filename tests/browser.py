"""Headless Chromium for the tests: Debian's ``chromium`` driven by Selenium via ``chromedriver``.

``scripts/test.sh`` (and so CI) installs both with apt-get when they are absent. Screenshots go
to ``test-artifacts/`` at the project root (git-ignored), kept after the run for a person to look.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def start_chrome():
    """A headless Chromium session that records the page's console messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        raise RuntimeError(
            "the browser tests need Debian's chromium and chromium-driver: run `make test` "
            "(scripts/browser.sh installs them) or apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_errors(driver) -> list[str]:
    """Console messages at level SEVERE since the last call (errors, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG of the page (its whole height by default) under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(int(height), 600), 12_000))
    driver.save_screenshot(str(path))
    return path
