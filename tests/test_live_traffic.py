"""Audits while correct workers keep writing: exactly the drift that existed before.

Real worker processes on PostgreSQL and MariaDB change rows and append their
events atomically, so they never create or remove drift on sum columns; the
audit must report the same findings, with the same deltas, every time.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from audit import parse_spec, run_audit
from drift import demo
from tests.workload import Workers

DRIFTED_ORDERS = {1004, 1041}


def findings(backend, tmp_path, name):
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    result = run_audit(spec, out=tmp_path / name, write_report=False)
    rows = pq.read_table(result.findings_path).to_pylist()
    return {(r["entity"], r["key"], r["column"], r["kind"], r["delta"]) for r in rows}, result


@pytest.mark.scenario("snapshot consistency: 20 audits under traffic == the prior drift")
def test_audits_during_traffic_report_exactly_the_prior_drift(server_backend, tmp_path):
    with server_backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    before, _ = findings(server_backend, tmp_path, "before")
    assert len(before) == 6  # 5 drifted rows and 1 unannounced event
    skus = [f"SKU-{i:03d}" for i in range(1, 25)]  # drifted SKUs included: deltas must hold
    orders = [o for o in range(1001, 1041) if o not in DRIFTED_ORDERS]
    with Workers(server_backend.url, 3, skus, orders) as workers:
        workers.wait_for(30)
        commits_seen = []
        for i in range(20):
            start = workers.commits()
            during, result = findings(server_backend, tmp_path, f"during{i}")
            commits_seen.append(workers.commits() - start)
            assert during == before, f"audit {i} under traffic differs"
            marks = result.summary["watermarks"]["stock"]
            assert marks["rows"] >= 1 and marks["value"][0] >= 88
    # The workers really wrote while the audits ran.
    assert sum(commits_seen) > 20
    after, _ = findings(server_backend, tmp_path, "after")
    assert after == before
