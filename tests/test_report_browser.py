"""The report in a real browser: headless Chromium driven by Selenium.

Skipped when chromium or chromedriver is missing, unless
DRIFT_REQUIRE_SERVERS=1 (then it fails). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import run_audit
from audit.report import render_report
from drift.demo import build_demo
from tests.reportdata import HOSTILE, hostile_folder

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DRIFT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DRIFT_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
]


def _browser_problem() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


def _driver(javascript: bool = True):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    problem = _browser_problem()
    if problem:
        if os.environ.get("DRIFT_REQUIRE_SERVERS") == "1":
            pytest.fail(f"DRIFT_REQUIRE_SERVERS=1 but {problem}")
        pytest.skip(problem)
    profile = tempfile.mkdtemp(prefix="drift-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    return driver, profile


@pytest.fixture
def browser() -> Iterator:
    driver, profile = _driver()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    shop = build_demo(folder / "shop")
    result = run_audit(shop.spec, out=folder / "audit", command="drift audit -c drift.toml")
    return result.report_path


def _open(driver, path: Path) -> None:  # type: ignore[no-untyped-def]
    driver.get(path.resolve().as_uri())
    driver.find_element("id", "findings-table")


def _assert_clean(driver) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no dialog is open
    problems = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []
    requests = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert requests == []


def _visible_keys(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#findings-table tbody.finding'))"
        ".filter(b => !b.hidden).map(b => b.querySelector('td.key').textContent)"
    )


def _screenshot(driver, name: str) -> Path:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


def test_demo_report_loads_filters_and_sorts(browser, demo_report):
    from selenium.webdriver.support.ui import Select

    _open(browser, demo_report)
    _assert_clean(browser)
    assert browser.find_element("id", "filters").is_displayed()
    keys = _visible_keys(browser)
    assert keys == [
        '["SKU-GHOST"]',
        "[1041]",
        '["SKU-006"]',
        '["SKU-003"]',
        '["SKU-009"]',
        "[1004]",
    ]
    status = browser.find_element("id", "filter-status")
    assert status.text == "Showing 6 of 6 embedded findings"

    search = browser.find_element("name", "q")
    search.send_keys("sku-003")
    assert _visible_keys(browser) == ['["SKU-003"]']
    assert status.text == "Showing 1 of 6 embedded findings"
    search.clear()
    Select(browser.find_element("name", "kind")).select_by_value("mismatch")
    assert _visible_keys(browser) == ['["SKU-006"]', '["SKU-003"]', "[1004]"]
    Select(browser.find_element("name", "entity")).select_by_value("orders")
    assert _visible_keys(browser) == ["[1004]"]
    browser.find_element("css selector", "#filters button[type=reset]").click()
    # The form's reset event fires before the fields are cleared: the page re-filters on
    # the next tick, so wait for it rather than racing it.
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 5).until(lambda d: len(_visible_keys(d)) == 6)

    browser.find_element("css selector", "button[data-sort=key]").click()
    assert _visible_keys(browser) == sorted(keys)
    header = browser.find_element("css selector", "button[data-sort=key]").find_element(
        "xpath", ".."
    )
    assert header.get_attribute("aria-sort") == "ascending"
    browser.find_element("css selector", "button[data-sort=key]").click()
    assert _visible_keys(browser) == sorted(keys, reverse=True)
    browser.find_element("css selector", "button[data-sort=delta]").click()
    assert _visible_keys(browser)[:2] == ['["SKU-006"]', '["SKU-003"]']

    # Evidence opens on demand, without any script (CSS :has on the checkbox).
    body = browser.find_element("css selector", "tbody.finding[id='f-3']")
    evidence = body.find_element("css selector", "tr.evidence")
    assert not evidence.is_displayed()
    body.find_element("css selector", "input.toggle").click()
    assert evidence.is_displayed()
    assert "stream:stock" in evidence.text
    _assert_clean(browser)
    _screenshot(browser, "report-demo.png")
    import base64

    pdf = base64.b64decode(browser.print_page())
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    (ARTIFACTS / "report-demo.pdf").write_bytes(pdf)


def test_hostile_report_runs_no_code(browser, tmp_path):
    folder = hostile_folder(tmp_path / "hostile")
    path = render_report(folder)
    _open(browser, path)
    _assert_clean(browser)
    assert browser.execute_script("return document.images.length") == 0
    assert browser.execute_script("return document.scripts.length") == 2
    keys = _visible_keys(browser)
    assert len(keys) == len(HOSTILE) + 1
    for box in browser.find_elements("css selector", "input.toggle"):
        box.click()
    search = browser.find_element("name", "q")
    search.send_keys("<script>")
    assert _visible_keys(browser) == [k for k in keys if "<script>" in k.lower()]
    assert browser.find_element("id", "plan-id").text == HOSTILE[0]
    _assert_clean(browser)
    _screenshot(browser, "report-hostile.png")


def test_report_is_readable_without_javascript(demo_report):
    driver, profile = _driver(javascript=False)
    try:
        _open(driver, demo_report)
        assert not driver.find_element("id", "filters").is_displayed()
        rows = driver.find_elements("css selector", "#findings-table tbody.finding tr.main")
        assert len(rows) == 6 and all(r.is_displayed() for r in rows)
        assert '["SKU-003"]' in driver.find_element("id", "findings-table").text
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
