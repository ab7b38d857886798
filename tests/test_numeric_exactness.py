"""Numbers at the edges of their column's type: audited, shown and fixed exactly.

Single-precision columns (PostgreSQL ``real``, MariaDB ``FLOAT``) are read exactly
(MariaDB's text protocol sends a FLOAT with 6 significant digits) and compared in
their own type; small integer columns take corrections that do not fit their type;
float keys are matched in their own type. Each through the audit, fix.sql and
rollback.sql with the real clients, and drift apply.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pyarrow.parquet as pq
import sqlalchemy as sa

from audit import run_audit
from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from tests.remediation_helpers import findings, run_client
from tests.test_remediate_literals import _audited, _ok

SINGLE = {"postgresql": "REAL", "mysql": "FLOAT"}
DOUBLE = {"postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE", "sqlite": "REAL"}


def _exact_rows(backend, columns: str) -> dict[object, tuple]:
    """ent's rows with ``columns`` read as doubles (a FLOAT read plainly is rounded)."""
    cast = "DOUBLE PRECISION" if backend.name == "postgresql" else "DOUBLE"
    selected = ", ".join(
        f"CAST({c} AS {cast})" if backend.name != "sqlite" else c for c in columns.split(",")
    )
    with backend.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT k, {selected} FROM ent ORDER BY k")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def _found(result) -> dict[tuple[str, str | None], dict]:
    rows = pq.read_table(result.findings_path).to_pylist()
    return {(r["key"], r["column"]): r for r in rows}


def _fix_and_roll_back_both_ways(backend, tmp_path, spec, audit, columns, fixed):
    """fix.sql, rollback.sql, drift apply and drift rollback each land exactly."""
    original = _exact_rows(backend, columns)
    _ok(run_client(backend, audit / "plan" / "fix.sql"))
    assert _exact_rows(backend, columns) == fixed
    assert findings(spec, backend, tmp_path, "fixed") == set()
    _ok(run_client(backend, audit / "plan" / "rollback.sql"))
    assert _exact_rows(backend, columns) == original

    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    apply_plan(audit, backend.url)
    assert _exact_rows(backend, columns) == fixed
    assert findings(spec, backend, tmp_path, "applied") == set()
    approve(audit, "bob", purpose="rollback")
    rollback_plan(audit, backend.url)
    assert _exact_rows(backend, columns) == original


# --------------------------------------------------------------------------- single precision


def test_mariadb_single_floats_are_read_exactly(tmp_path):
    """PyMySQL reads a FLOAT as the server's text, 6 significant digits: 1234568 read as
    1234570, so the finding showed equal values, the cas guard never matched and the
    orphan's delete guard neither."""
    from tests.conftest import make_backend

    gen = make_backend("mysql", tmp_path)
    backend = next(gen)
    try:
        spec, audit = _audited(
            backend,
            tmp_path,
            [
                "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v FLOAT NOT NULL)",
                "CREATE TABLE ent (k INTEGER PRIMARY KEY, hi FLOAT)",
            ],
            [
                "INSERT INTO ev VALUES (1, 1, 1234567), (2, 2, 0.1)",
                "INSERT INTO ent VALUES (1, 1234568), (2, 0.1), (3, 7654321)",
            ],
            {"hi": ("last", "v")},
            delete_orphans=True,
        )
        result = run_audit(spec, out=tmp_path / "again", write_report=False)
        found = _found(result)
        assert set(found) == {("[1]", "hi"), ("[3]", None)}
        assert found["[1]", "hi"]["expected"] == "1234567.0"
        assert found["[1]", "hi"]["actual"] == "1234568.0"
        assert found["[3]", None]["actual"] == '{"hi":7654321.0}'
        evidence = pq.read_table(tmp_path / "again" / "evidence.parquet").to_pylist()
        assert [json.loads(r["row"])["v"] for r in evidence if r["key"] == "[1]"] == [1234567.0]
        fixed = {1: (1234567.0,), 2: (float(Decimal("0.100000001490116119384765625")),)}
        _fix_and_roll_back_both_ways(backend, tmp_path, spec, audit, "hi", fixed)
    finally:
        next(gen, None)
