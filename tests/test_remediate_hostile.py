"""Hostile keys and values round-trip exactly through plan, scripts and apply.

A ledger whose account names and notes are SQL injections, MySQL backslash
traps, percent signs (pyformat), dollar quotes, delimiters, control characters
and non-BMP unicode. Every account drifted; fix.sql (with the real client),
rollback.sql and drift apply must each land exactly on the expected rows.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from tests.remediation_helpers import findings, run_client, table_state

HOSTILE = [
    "O'Brien\"; DROP TABLE x;--",
    "back\\slash\\",
    "\\'; DELETE FROM accounts; --",
    "50% off %s %(x)s %%",
    "emoji \U0001f600 \U0001d11e clef",
    "line1\nline2\r\nDELIMITER ;",
    "$drift$ $$ // \\g",
    "ctl \x01\x07\x1b[0m\x7f tab\there",
]

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("balance", sa.Integer, nullable=False),
    sa.Column("note", sa.String(200)),
)
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("note", sa.String(200)),
)

SPEC = """\
version = 1
[streams.ledger]
table = "ledger"
key = ["name"]
order_by = ["id"]

[entities.accounts]
table = "accounts"
key = ["name"]

[entities.accounts.columns.balance]
stream = "ledger"
fold = "sum"
value = "amount"

[entities.accounts.columns.note]
stream = "ledger"
fold = "last"
value = "note"
"""


def _build(backend) -> None:
    with backend.engine.begin() as conn:
        metadata.create_all(conn)
        events, rows = [], []
        for i, name in enumerate(HOSTILE):
            note = HOSTILE[-1 - i] + " ✓"
            events.append({"id": 2 * i + 1, "name": name, "amount": 10 + i, "note": "old"})
            events.append({"id": 2 * i + 2, "name": name, "amount": 5, "note": note})
            # Drifted: a lost update in balance, a stale note.
            rows.append({"name": name, "balance": 10 + i, "note": "old"})
        # A missing row (events, no account) and an orphan (account, no events).
        events.append({"id": 100, "name": "missing '\\ \U0001f600", "amount": 7, "note": "n'\\"})
        rows.append({"name": "orphan \"'\\%", "balance": 3, "note": "x\\'"})
        conn.execute(ledger.insert(), events)
        conn.execute(accounts.insert(), rows)


def _expected(backend) -> dict[str, tuple]:
    with backend.engine.connect() as conn:
        result = {}
        for row in conn.execute(sa.select(ledger).order_by(ledger.c.id)):
            balance, _ = result.get(row.name, (0, None))
            result[row.name] = (balance + row.amount, row.note)
    return result


def _accounts(backend) -> dict[str, tuple]:
    with backend.engine.connect() as conn:
        return {r.name: (r.balance, r.note) for r in conn.execute(sa.select(accounts))}


@pytest.mark.scenario("SQL metacharacters in keys and values: scripts, apply, rollback")
def test_hostile_keys_round_trip(backend, tmp_path):
    _build(backend)
    spec = parse_spec(SPEC + f'\n[database]\nurl = "{backend.url}"\n'.replace("\\", "\\\\"))
    audit = tmp_path / "audit"
    run_audit(spec, out=audit, write_report=False)
    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    original = table_state(backend, "accounts")
    truth = _expected(backend)
    assert len(findings(spec, backend, tmp_path, "before")) == 2 * len(HOSTILE) + 2

    # fix.sql with the standard client lands exactly on the rebuilt state.
    result = run_client(backend, audit / "plan" / "fix.sql")
    assert result.returncode == 0, result.stderr.decode()
    assert _accounts(backend) == truth
    # rollback.sql restores every hostile value byte for byte.
    result = run_client(backend, audit / "plan" / "rollback.sql")
    assert result.returncode == 0, result.stderr.decode()
    assert table_state(backend, "accounts") == original

    # drift apply (a new plan of the same audit) lands on the same state.
    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    applied = apply_plan(audit, backend.url)
    assert applied.rows_changed == 2 * len(HOSTILE) + 2
    assert _accounts(backend) == truth
    assert findings(spec, backend, tmp_path, "after") == set()
