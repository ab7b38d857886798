"""A concurrent drift test for the shop's ship_stock job, in ten lines each."""

from pathlib import Path

import jobs

from drift.testing import assert_no_drift, run_concurrently

SPEC = Path(__file__).with_name("drift.toml")


def test_fixed_ship_stock_keeps_inventory_exact(drift_scratch_url):
    jobs.setup(drift_scratch_url)
    run_concurrently(jobs.ship_fixed, drift_scratch_url, workers=4, iterations=25)
    assert_no_drift(SPEC, drift_scratch_url)


def test_racy_ship_stock_loses_updates(drift_scratch_url):
    jobs.setup(drift_scratch_url)
    run_concurrently(jobs.ship_racy, drift_scratch_url, workers=4, iterations=25)
    assert_no_drift(SPEC, drift_scratch_url)  # fails: the race is caught and shown
