"""Regenerate docs/images/report.png: the demo's report in headless Chromium.

    python docs/images/make_report_png.py

Builds the demo shop in a temporary folder, audits it, opens the report with
the lost update's evidence expanded, and saves a 1280px-wide screenshot.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from audit import run_audit
from drift.demo import build_demo

OUT = Path(__file__).resolve().parent / "report.png"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="drift-shot-"))
    profile = tempfile.mkdtemp(prefix="drift-chromium-")
    try:
        shop = build_demo(work / "shop")
        result = run_audit(shop.spec, out=work / "audit", command="drift demo")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument("--window-size=1280,1000")
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(result.report_path.as_uri())
            driver.find_element("css selector", "#f-3 input.toggle").click()
            driver.execute_script("window.scrollTo(0, 0)")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(height + 20, 2600))
            driver.save_screenshot(str(OUT))
        finally:
            driver.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
