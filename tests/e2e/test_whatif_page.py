"""The what-if page in a real headless Chromium against a real gunicorn, as an analyst uses it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import console_errors, screenshot, start_chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from training.config import load_config
from training.generate import write_demo
from training.pipeline import train

ROOT = Path(__file__).resolve().parents[2]
KEY = "page-scoring-key"
STARTUP_SECONDS = 60
#: the issue's budget for the page's first load (HTML, CSS and JS; the key is typed before data)
FIRST_LOAD_BYTES = 300 * 1024
CUSTOMER = {
    "total_spend": 1250.0,
    "order_count": 14,
    "days_since_last_purchase": 12,
    "unique_products": 9,
    "discount_usage": 0.2,
    "return_rate": 0.05,
    "mobile_usage": 0.8,
}

#: the campaign the test pool opens to the "VIP Champions" segment only
RESTRICTED = "wealth_management"

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body=None, key: str | None = KEY):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture(scope="module")
def base(tmp_path_factory, redis_url):
    """gunicorn (2 workers) serving a bundle trained by the pipeline, with its HTML report."""
    data = tmp_path_factory.mktemp("demo")
    write_demo(data, n_customers=3000, seed=4)
    # one campaign only for the VIP segment, so a customer elsewhere sees why it is not offered
    pool = json.loads((data / "campaigns.json").read_text())
    for campaign in pool:
        if campaign["id"] == RESTRICTED:
            campaign["eligible_segments"] = ["VIP Champions"]
    (data / "campaigns.json").write_text(json.dumps(pool))
    root = tmp_path_factory.mktemp("bundles")
    config = load_config(
        ROOT / "examples" / "demo.toml", {"data_dir": str(data), "output": str(root)}
    )
    train(config, environ={})
    run = tmp_path_factory.mktemp("gunicorn")
    (run / "metrics").mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PROMETHEUS_"))}
    env.update(
        MODEL_ROOT=str(root),
        MODEL_VERSION="",
        BUNDLE_HMAC_KEY="",
        API_KEYS=KEY,
        ADMIN_API_KEYS="page-admin-key",
        BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(run / "metrics"),
        RELOAD_MARKER=str(run / "reload.json"),
        REDIS_URL=redis_url,
        CACHE_PREFIX=f"segsvc-page-{port}",
    )
    log = run / "gunicorn.log"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited early:\n{log.read_text()[-3000:]}")
            try:
                if _call(url, "/readyz", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def chrome():
    driver = start_chrome()
    yield driver
    driver.quit()


def connect(chrome, base: str) -> WebDriverWait:
    """Open the page, type the key, wait until the form is built from the bundle."""
    console_errors(chrome)  # drop what an earlier test left (the expected 422 of bad input)
    chrome.get(base + "/")
    chrome.find_element(By.ID, "api-key").send_keys(KEY)
    chrome.find_element(By.ID, "connect").click()
    wait = WebDriverWait(chrome, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#fields .field"))
    return wait


def fill(chrome, values: dict) -> None:
    for name, value in values.items():
        field = chrome.find_element(By.ID, f"f-{name}")
        field.clear()
        field.send_keys(str(value))


def test_first_load_is_small_and_needs_no_key(base):
    total = 0
    for path in ("/", "/static/whatif.js", "/static/whatif.css"):
        status, body, _headers = _call(base, path, key=None)
        assert status == 200, path
        total += len(body)
    assert total < FIRST_LOAD_BYTES
    # the bundle's description is not open
    assert _call(base, "/bundle", key=None)[0] == 401


def test_form_comes_from_the_feature_schema(base, chrome):
    connect(chrome, base)
    _status, body, _ = _call(base, "/bundle")
    info = json.loads(body)
    names = [f.get_attribute("data-field") for f in chrome.find_elements(By.CSS_SELECTOR, ".field")]
    assert names == [f["name"] for f in info["features"]["inputs"]] + [
        c["name"] for c in info["features"]["categoricals"]
    ]
    first = info["features"]["inputs"][0]
    hint = chrome.find_element(By.CSS_SELECTOR, f'[data-field="{first["name"]}"] .range').text
    assert hint.startswith("seen ")
    assert console_errors(chrome) == []


def test_filled_form_shows_the_apis_own_answer(base, chrome):
    wait = connect(chrome, base)
    fill(chrome, CUSTOMER)
    chrome.find_element(By.ID, "score").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#offers tbody tr"))

    status, body, _ = _call(base, "/bundle")
    n_campaigns = len(json.loads(body)["campaigns"])
    status, body, _ = _call(base, "/recommend", {**CUSTOMER, "explain": True, "top_k": n_campaigns})
    assert status == 200
    answer = json.loads(body)
    title = chrome.find_element(By.ID, "segment-title")
    assert title.text == f"Segment {answer['segment_id']}: {answer['segment_name']}"
    shown = [
        r.get_attribute("data-campaign")
        for r in chrome.find_elements(By.CSS_SELECTOR, "#offers tbody tr")
    ]
    assert shown == [c["campaign_id"] for c in answer["campaigns"]]
    first_probability = chrome.find_element(By.CSS_SELECTOR, "#offers tbody tr td:nth-child(3)")
    assert float(first_probability.text) == pytest.approx(
        answer["campaigns"][0]["probability"], abs=1e-4
    )
    # every campaign of the pool is either offered or said why not
    not_offered = [
        li.get_attribute("data-campaign")
        for li in chrome.find_elements(By.CSS_SELECTOR, "#not-offered li[data-campaign]")
    ]
    assert len(shown) + len(not_offered) == n_campaigns
    assert answer["segment_name"] != "VIP Champions"
    assert not_offered == [RESTRICTED]
    reason = chrome.find_element(By.CSS_SELECTOR, f'#not-offered li[data-campaign="{RESTRICTED}"]')
    assert f"not open to segment {answer['segment_id']}" in reason.text
    assert "open to: 'VIP Champions'" in reason.text
    # the customer is drawn on the map: the canvas has the marker's colour at its position
    status, body, _ = _call(base, "/bundle/position", CUSTOMER)
    assert status == 200
    painted = chrome.execute_script(
        "const c = document.getElementById('map');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )
    assert painted > 1000
    assert console_errors(chrome) == []
    screenshot(chrome, "whatif-answer")


def test_bad_input_shows_the_apis_field_errors_next_to_the_fields(base, chrome):
    wait = connect(chrome, base)
    bad = {**CUSTOMER, "total_spend": -5, "discount_usage": 2, "mobile_usage": "lots"}
    fill(chrome, bad)
    chrome.find_element(By.ID, "f-order_count").clear()
    chrome.find_element(By.ID, "score").click()
    wait.until(lambda d: d.find_element(By.ID, "e-total_spend").text)

    sent = {k: v for k, v in bad.items()}
    del sent["order_count"]
    status, body, _ = _call(base, "/recommend", sent)
    assert status == 422
    fields = json.loads(body)["error"]["fields"]
    assert set(fields) >= {"total_spend", "discount_usage", "mobile_usage", "order_count"}
    for name, messages in fields.items():
        box = chrome.find_element(By.ID, f"e-{name}")
        assert box.text == " ".join(messages), name
        field = chrome.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]')
        assert "invalid" in field.get_attribute("class")
    assert not chrome.find_element(By.ID, "result").is_displayed()
    assert "validation_error" in chrome.find_element(By.ID, "form-error").text
    screenshot(chrome, "whatif-errors")


def test_bundle_tab_shows_the_served_bundle_and_opens_the_report(base, chrome):
    wait = connect(chrome, base)
    chrome.find_element(By.ID, "tab-bundle").click()
    _status, body, _ = _call(base, "/bundle")
    info = json.loads(body)
    assert chrome.find_element(By.ID, "bundle-title").text == f"Model {info['model_version']}"
    rows = chrome.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
    assert len(rows) == info["k"]
    chosen = chrome.find_element(By.CSS_SELECTOR, "#k-table tr.chosen td").text
    assert int(chosen) == info["k_selection"]["chosen_k"]
    served = chrome.find_element(By.CSS_SELECTOR, "#comparison tr.served td").text
    assert served == "K-Means (served)"
    chrome.find_element(By.ID, "open-report").click()
    wait.until(lambda d: d.find_element(By.ID, "report-frame").is_displayed())
    chrome.switch_to.frame("report-frame")
    try:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "img.chart"))
        assert info["model_version"] in chrome.find_element(By.TAG_NAME, "h1").text
        decoded = chrome.execute_script(
            "return Array.from(document.querySelectorAll('img.chart'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        assert decoded
    finally:
        chrome.switch_to.default_content()
    assert console_errors(chrome) == []
    screenshot(chrome, "whatif-bundle")
