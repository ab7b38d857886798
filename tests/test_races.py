"""Real racing workers, then the audit: every drifted row and column, exact values, nothing else.

Racy worker processes (read-modify-write without a lock, retries that re-apply,
late status writes) run concurrently against each engine. The truth is a plain
Python fold of the events the workers wrote (tests/workload.py:ground_truth).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from audit import parse_spec, run_audit
from drift import demo
from tests.workload import Workers, ground_truth, run_racy_workers

HOT_SKUS = ["SKU-001", "SKU-002", "SKU-003", "SKU-004"]
HOT_ORDERS = [1001, 1002, 1003]


def audit_rows(backend, out):
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    result = run_audit(spec, out=out, write_report=False)
    return pq.read_table(result.findings_path).to_pylist()


def canonical(rows):
    def norm(text):
        if text is None:
            return None
        value = json.loads(text)
        return json.dumps(value) if not isinstance(value, (int, float)) else str(int(value))

    def row(r):
        if r["kind"] == "unannounced_event":  # compared by the event it names
            return (r["entity"], r["key"], None, r["kind"], None, json.loads(r["actual"])["event"])
        return (
            r["entity"],
            r["key"],
            r["column"],
            r["kind"],
            norm(r["expected"]),
            norm(r["actual"]),
        )

    return {row(r) for r in rows}


@pytest.mark.scenario("racing workers, then audit == ground truth (one seed)")
def test_racing_workers_then_audit_equals_ground_truth(backend, tmp_path):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    workers = 2 if backend.name == "sqlite" else 4
    run_racy_workers(backend.url, workers, HOT_SKUS, HOT_ORDERS, iterations=60, seed=1)
    truth = ground_truth(backend.engine)
    found = canonical(audit_rows(backend, tmp_path / "audit"))
    assert found == truth
    # The races really happened: lost updates or double applies on the hot SKUs.
    hot = {k for (e, k, c, kind, _, _) in truth if e == "inventory" and kind == "mismatch"}
    assert hot & {json.dumps([s]) for s in HOT_SKUS}


@pytest.mark.scenario("racing workers, then audits under correct traffic == ground truth")
def test_racing_workers_then_audit_under_correct_traffic(server_backend, tmp_path):
    """The same, while correct workers keep writing during the audit (deltas are stable)."""
    with server_backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    run_racy_workers(server_backend.url, 4, HOT_SKUS, HOT_ORDERS, iterations=60, seed=2)
    truth = ground_truth(server_backend.engine)
    quiet = audit_rows(server_backend, tmp_path / "quiet")
    assert canonical(quiet) == truth
    expected = {(r["entity"], r["key"], r["column"], r["kind"], r["delta"]) for r in quiet}
    drifted_orders = {json.loads(r["key"])[0] for r in quiet if r["entity"] == "orders"}
    calm_orders = [o for o in range(1001, 1041) if o not in drifted_orders]
    skus = [f"SKU-{i:03d}" for i in range(1, 25)]
    with Workers(server_backend.url, 3, skus, calm_orders) as traffic:
        traffic.wait_for(20)
        for i in range(5):
            rows = audit_rows(server_backend, tmp_path / f"busy{i}")
            assert {
                (r["entity"], r["key"], r["column"], r["kind"], r["delta"]) for r in rows
            } == expected
