"""fix.sql and rollback.sql run with the real psql, mariadb and sqlite3 clients."""

from __future__ import annotations

import sqlalchemy as sa

from tests.remediation_helpers import audited_shop, findings, run_client, shop_spec, table_state

TABLES = ("inventory", "orders", "stock_events", "order_events", "drift_remediation_log")


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
    assert second.returncode != 0
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
