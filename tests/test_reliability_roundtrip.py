"""Property: random state, random corruption -> audit -> plan -> apply -> a clean audit;
-> rollback -> exactly the corrupt state again.

The random cases are tests/test_property.py's (events with NULLs, non-ASCII text,
missing and orphan rows, corrupted sums, counts, minimums, maximums, firsts and
lasts); the truth of what must be found comes from tests/naive.py, never drift.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from audit import parse_spec, run_audit
from remediate.apply import apply_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from tests import shop
from tests.reliability import scaled
from tests.test_property import case, truth_and_rows

HISTORY = ("drift_remediation_log", "drift_remediation_batches", "drift_remediation_rows")


def _rows(backend) -> list[tuple]:
    with backend.engine.connect() as conn:
        ent = sa.Table("ent", sa.MetaData(), autoload_with=conn)
        return sorted(map(tuple, conn.execute(sa.select(ent)).all()), key=repr)


def _findings(spec, folder: Path) -> set[tuple]:
    result = run_audit(spec, out=folder, write_report=False)
    rows = pq.read_table(result.findings_path).to_pylist()
    return {(r["key"], r["column"], r["kind"]) for r in rows}


def round_trip(backend, data, runs) -> None:
    events, rows, truth = truth_and_rows(data)
    with backend.engine.begin() as conn:
        for name in ("ent", "ev", *HISTORY):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    shop.load(
        backend, [{k: v for k, v in e.items() if k not in ("id", "key")} for e in events], rows
    )
    corrupt = _rows(backend)
    spec = parse_spec(shop.spec_text(backend.url))
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit"
        found = _findings(spec, audit)
        assert len(found) == len(truth)
        write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
        approve(audit, "alice")
        approve(audit, "bob", purpose="rollback")
        apply_plan(audit, backend.url)
        assert _findings(spec, Path(tmp) / "after") == set()
        apply_plan(audit, backend.url, operation="rollback")
        assert _rows(backend) == corrupt
    runs.run()


@pytest.mark.scenario("round trip: random corruption -> fix -> clean; rollback -> corruption back")
@settings(
    max_examples=scaled(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=case)
def test_round_trip_sqlite(sqlite_backend, data, scenario_runs):
    round_trip(sqlite_backend, data, scenario_runs)


@pytest.mark.scenario("round trip: random corruption -> fix -> clean; rollback -> corruption back")
@settings(
    max_examples=scaled(15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=case)
def test_round_trip_on_servers(server_backend, data, scenario_runs):
    round_trip(server_backend, data, scenario_runs)
