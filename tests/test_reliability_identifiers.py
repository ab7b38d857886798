"""Table and column names with quotes, backticks, spaces, semicolons and comment marks.

The names reach SQL only as quoted identifiers: audit, plan, fix.sql and
rollback.sql with each engine's real client, drift apply, verify and rollback
must all land exactly, and the database must hold only the tables it had.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from drift.cli import main
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from tests.remediation_helpers import run_client

ENTITY = 'acc`t "s"; --x'
STREAM = 'led ger`;"/*'
KEY = 'na"me` x'
BALANCE = "bal'ance; --"
NOTE = 'no`te "x"'
EV_ID, EV_AMOUNT, EV_NOTE = "i d", "am`t;", "n\"ote'"

metadata = sa.MetaData()
entity = sa.Table(
    ENTITY,
    metadata,
    sa.Column(KEY, sa.String(40), primary_key=True),
    sa.Column(BALANCE, sa.Integer, nullable=False),
    sa.Column(NOTE, sa.String(40)),
)
stream = sa.Table(
    STREAM,
    metadata,
    sa.Column(EV_ID, sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(KEY, sa.String(40), nullable=False),
    sa.Column(EV_AMOUNT, sa.Integer, nullable=False),
    sa.Column(EV_NOTE, sa.String(40)),
)


def q(text: str) -> str:
    """A TOML basic string (JSON escapes are TOML escapes)."""
    return json.dumps(text)


def spec_text(url: str) -> str:
    return f"""
version = 1
[database]
url = {q(url)}

[streams.ledger]
table = {q(STREAM)}
key = [{q(KEY)}]
order_by = [{q(EV_ID)}]

[entities.accounts]
table = {q(ENTITY)}
key = [{q(KEY)}]

[entities.accounts.columns.{q(BALANCE)}]
stream = "ledger"
fold = "sum"
value = {q(EV_AMOUNT)}

[entities.accounts.columns.{q(NOTE)}]
stream = "ledger"
fold = "last"
value = {q(EV_NOTE)}
"""


def build(backend) -> None:
    with backend.engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        conn.execute(
            stream.insert(),
            [
                {EV_ID: 1, KEY: "a'; --", EV_AMOUNT: 10, EV_NOTE: "x"},
                {EV_ID: 2, KEY: "a'; --", EV_AMOUNT: 5, EV_NOTE: "y`"},
                {EV_ID: 3, KEY: 'b"', EV_AMOUNT: 7, EV_NOTE: "z"},
                {EV_ID: 4, KEY: "missing", EV_AMOUNT: 3, EV_NOTE: "m"},
            ],
        )
        conn.execute(
            entity.insert(),
            [
                {KEY: "a'; --", BALANCE: 10, NOTE: "x"},  # lost update, stale note
                {KEY: 'b"', BALANCE: 7, NOTE: "z"},  # right
                {KEY: "orphan", BALANCE: 1, NOTE: None},
            ],
        )


def state(backend) -> dict:
    with backend.engine.connect() as conn:
        rows = conn.execute(sa.select(entity)).all()
        tables = sorted(
            t for t in sa.inspect(conn).get_table_names() if not t.startswith("drift_remediation")
        )
    return {"rows": sorted(map(tuple, rows)), "tables": tables}


def audit(backend, folder):
    spec = parse_spec(spec_text(backend.url))
    result = run_audit(spec, out=folder)
    rows = pq.read_table(result.findings_path).to_pylist()
    return {(r["key"], r["column"], r["kind"]) for r in rows}


@pytest.mark.scenario("SQL metacharacters in table and column names: audit, plan, apply")
def test_hostile_identifiers_through_audit_plan_and_apply(backend, tmp_path):
    build(backend)
    original = state(backend)
    assert original["tables"] == sorted([ENTITY, STREAM])
    found = audit(backend, tmp_path / "a")
    assert found == {
        ('["a\'; --"]', BALANCE, "mismatch"),
        ('["a\'; --"]', NOTE, "mismatch"),
        ('["missing"]', None, "missing_row"),
        ('["orphan"]', None, "orphan_row"),
    }
    assert "<script" not in (tmp_path / "a" / "report.html").read_text().split("</style>")[0]
    write_plan(tmp_path / "a", build_plan(tmp_path / "a", PlanOptions(delete_orphans=True)))
    plan = tmp_path / "a" / "plan"
    modes = [a["mode"] for a in json.loads((plan / "plan.json").read_text())["actions"]]
    assert sorted(modes) == ["cas", "delete", "delta", "insert"]

    # The standalone scripts, with the engine's own client.
    fix = run_client(backend, plan / "fix.sql")
    assert fix.returncode == 0, fix.stderr.decode()
    assert audit(backend, tmp_path / "after-script") == set()
    back = run_client(backend, plan / "rollback.sql")
    assert back.returncode == 0, back.stderr.decode()
    assert state(backend) == original

    # drift apply, verify, rollback (history tables dropped: the scripts recorded the plan).
    with backend.engine.begin() as conn:
        for name in (
            "drift_remediation_log",
            "drift_remediation_batches",
            "drift_remediation_rows",
        ):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    approve(plan, "alice")
    approve(plan, "bob", purpose="rollback")
    assert main(["apply", str(plan), "--db", backend.url, "--batch-size", "2"]) == 0
    assert main(["verify", str(plan), "--db", backend.url]) == 0
    assert audit(backend, tmp_path / "after-apply") == set()
    with backend.engine.connect() as conn:
        row = conn.execute(sa.select(entity).where(entity.c[KEY] == "a'; --")).one()
    assert tuple(row) == ("a'; --", 15, "y`")
    assert main(["rollback", str(plan), "--db", backend.url]) == 0
    assert state(backend) == original
