"""fix.sql and rollback.sql run with the real psql, mariadb and sqlite3 clients."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audit.errors import GuardFailedError, RefusedError
from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.history import History
from tests.remediation_helpers import audited_shop, findings, run_client, shop_spec, table_state

TABLES = ("inventory", "orders", "stock_events", "order_events", "drift_remediation_log")


def _refused(result, message: bytes) -> None:
    """The client failed with ``message`` (the clients print errors on stderr)."""
    assert result.returncode != 0
    assert message in result.stderr, result.stderr.decode()


def test_fix_script_fixes_then_refuses_a_second_run(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    spec = shop_spec(backend)
    assert len(findings(spec, backend, tmp_path, "before")) == 5

    first = run_client(backend, audit / "plan" / "fix.sql")
    assert first.returncode == 0, first.stderr.decode()
    assert findings(spec, backend, tmp_path, "after") == set()
    state = table_state(backend, *TABLES)
    assert len(state["drift_remediation_log"]) == 1

    second = run_client(backend, audit / "plan" / "fix.sql")
    _refused(second, b"was already applied (or is being applied); nothing was changed")
    assert table_state(backend, *TABLES) == state


def test_rollback_script_restores_the_audited_state(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    original = table_state(backend, "inventory", "orders")
    assert run_client(backend, audit / "plan" / "fix.sql").returncode == 0
    assert table_state(backend, "inventory", "orders") != original
    result = run_client(backend, audit / "plan" / "rollback.sql")
    assert result.returncode == 0, result.stderr.decode()
    assert table_state(backend, "inventory", "orders") == original


def test_a_missed_cas_guard_changes_nothing(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    # Someone changed order 1004 after the audit: the cas guard (status = 'paid') misses.
    backend.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 1004")
    before = table_state(backend, *TABLES)
    result = run_client(backend, audit / "plan" / "fix.sql")
    assert result.returncode != 0
    assert b"guard failed" in result.stderr or b"guard failed" in result.stdout
    assert table_state(backend, *TABLES) == before
    # The delta actions run before the cas one in the script: they were rolled back too.
    with backend.engine.connect() as conn:
        query = sa.text("SELECT on_hand FROM inventory WHERE sku = 'SKU-003'")
        assert (
            conn.execute(query).scalar_one()
            == dict(before["inventory"][i][:2] for i in range(len(before["inventory"])))["SKU-003"]
        )


def test_rollback_script_refuses_when_the_fix_never_ran(backend, tmp_path):
    """rollback.sql on its own used to subtract corrections that were never added, and
    record itself as rolled back."""
    audit = audited_shop(backend, tmp_path)
    rollback = audit / "plan" / "rollback.sql"
    before = table_state(backend, *TABLES)
    assert before["drift_remediation_log"] == []

    # No history tables at all: refused, and none are created.
    _refused(run_client(backend, rollback), b"was never applied; nothing to roll back")
    assert table_state(backend, *TABLES) == before
    with backend.engine.connect() as conn:
        assert not sa.inspect(conn).has_table("drift_remediation_log")

    # History tables (say from another plan), but no fix of this plan: refused.
    with backend.engine.connect() as conn:
        History().ensure(conn)
    _refused(run_client(backend, rollback), b"was never applied; nothing to roll back")
    assert table_state(backend, *TABLES) == before

    # drift rollback agrees, and still can roll back once the fix is applied.
    approve(audit, "alice", purpose="rollback")
    with pytest.raises(RefusedError, match="was never applied; nothing to roll back"):
        rollback_plan(audit, backend.url)
    assert run_client(backend, audit / "plan" / "fix.sql").returncode == 0
    assert rollback_plan(audit, backend.url).rows_changed == 5
    assert table_state(backend, "inventory", "orders") == {
        k: before[k] for k in ("inventory", "orders")
    }


def test_rollback_script_refuses_a_part_applied_batched_fix(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    # Order 1004 changed after the audit: its batch's guard misses after earlier batches
    # were committed, and the fix's log row stays in_progress.
    backend.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 1004")
    with pytest.raises(GuardFailedError):
        apply_plan(audit, backend.url, batch_size=1)
    assert backend.scalar("SELECT count(*) FROM drift_remediation_batches") >= 1
    assert backend.scalar("SELECT outcome FROM drift_remediation_log") == "in_progress"
    before = table_state(backend, *TABLES, "drift_remediation_batches")

    result = run_client(backend, audit / "plan" / "rollback.sql")
    _refused(result, b"was applied only in part (a batched apply stopped)")
    assert table_state(backend, *TABLES, "drift_remediation_batches") == before
    # fix.sql refuses too: drift apply resumes a batched apply, not the script.
    _refused(run_client(backend, audit / "plan" / "fix.sql"), b"was already applied")
    assert table_state(backend, *TABLES, "drift_remediation_batches") == before


def test_rollback_script_undoes_drift_apply_once(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    original = table_state(backend, "inventory", "orders")
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 5
    applied = table_state(backend, *TABLES)
    _refused(run_client(backend, audit / "plan" / "fix.sql"), b"was already applied")
    assert table_state(backend, *TABLES) == applied

    first = run_client(backend, audit / "plan" / "rollback.sql")
    assert first.returncode == 0, first.stderr.decode()
    assert table_state(backend, "inventory", "orders") == original
    rolled_back = table_state(backend, *TABLES)
    _refused(run_client(backend, audit / "plan" / "rollback.sql"), b"was already rolled back")
    assert table_state(backend, *TABLES) == rolled_back
    approve(audit, "alice", purpose="rollback")
    with pytest.raises(RefusedError, match="was already rolled back"):
        rollback_plan(audit, backend.url)
