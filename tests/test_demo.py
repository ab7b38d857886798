"""The demo shop's staged races are found exactly, on every engine."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import sqlalchemy as sa

from audit import parse_spec, run_audit
from drift import demo
from tests.naive import fold, same


def test_demo_shop_findings_equal_the_staged_races(backend, tmp_path):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    result = run_audit(spec, out=tmp_path / "audit")
    rows = pq.read_table(result.findings_path).to_pylist()

    with backend.engine.connect() as conn:
        events = [dict(r._mapping) for r in conn.execute(sa.select(demo.stock_events))]
        status_events = [dict(r._mapping) for r in conn.execute(sa.select(demo.order_events))]
        on_hand = dict(
            conn.execute(sa.select(demo.inventory.c.sku, demo.inventory.c.on_hand)).all()
        )
        status = dict(conn.execute(sa.select(demo.orders.c.order_id, demo.orders.c.status)).all())
    for e in events:
        e["key"] = (e["sku"],)
    for e in status_events:
        e["key"] = (e["order_id"],)
    signed = {"received": 1, "shipped": -1}
    expected_stock = fold(events, "sum", lambda r: signed[r["kind"]] * r["qty"])
    expected_status = fold(status_events, "last", lambda r: r["new_status"])

    truth = set()
    for (sku,), value in expected_stock.items():
        if sku not in on_hand:
            truth.add(("inventory", json.dumps([sku]), None, "missing_row"))
        elif not same(on_hand[sku], value):
            truth.add(("inventory", json.dumps([sku]), "on_hand", "mismatch"))
    truth |= {
        ("inventory", json.dumps([s]), None, "orphan_row")
        for s in on_hand
        if (s,) not in expected_stock
    }
    for (order_id,), value in expected_status.items():
        if order_id not in status:
            truth.add(("orders", json.dumps([order_id]), None, "missing_row"))
        elif status[order_id] != value:
            truth.add(("orders", json.dumps([order_id]), "status", "mismatch"))

    # The outbox: every stock event without a message, computed here by hand.
    with backend.engine.connect() as conn:
        announced = set(conn.execute(sa.select(demo.outbox.c.event_id)).scalars())
    truth |= {
        ("inventory", json.dumps([e["sku"]]), None, "unannounced_event")
        for e in events
        if e["id"] not in announced
    }

    found = {(r["entity"], r["key"], r["column"], r["kind"]) for r in rows}
    assert found == truth
    # The four staged defects that show up in the current tables, with exact values.
    by_key = {(r["entity"], r["key"]): r for r in rows}
    lost = by_key[("inventory", '["SKU-003"]')]
    assert json.loads(lost["actual"]) - json.loads(lost["expected"]) == 3  # one decrement lost
    doubled = by_key[("inventory", '["SKU-006"]')]
    assert json.loads(doubled["actual"]) - json.loads(doubled["expected"]) == 12
    assert lost["delta"] == -3.0 and doubled["delta"] == -12.0
    stale = by_key[("orders", "[1004]")]
    assert (json.loads(stale["expected"]), json.loads(stale["actual"])) == ("shipped", "paid")
    assert by_key[("inventory", '["SKU-GHOST"]')]["kind"] == "orphan_row"
    assert json.loads(by_key[("orders", "[1041]")]["expected"]) == {"status": "new"}
    assert len(rows) == 6
    assert result.summary["counts"]["by_kind"] == {
        "mismatch": 3,
        "missing_row": 1,
        "orphan_row": 1,
        "unannounced_event": 1,
    }
    assert result.summary["counts"]["drifted_rows"] == 5


def _runs(backend, **where):
    """job_runs rows (read back without drift) matching column = value."""
    with backend.engine.connect() as conn:
        query = sa.select(demo.job_runs).order_by(demo.job_runs.c.id)
        for column, value in where.items():
            query = query.where(demo.job_runs.c[column] == value)
        return [dict(r._mapping) for r in conn.execute(query)]


def test_demo_shop_causes_name_each_staged_race(backend, tmp_path):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    result = run_audit(spec, out=tmp_path / "audit")
    rows = pq.read_table(result.findings_path).to_pylist()
    by_key = {(r["entity"], r["key"], r["kind"]): r for r in rows}

    def evidence(entity, key, kind):
        row = by_key[(entity, key, kind)]
        return row["cause"], json.loads(row["evidence"])

    # Lost update on SKU-003: the two ship_stock runs the demo interleaved.
    racers = _runs(backend, sku="SKU-003", job_name="ship_stock")[-2:]
    cause, ev = evidence("inventory", '["SKU-003"]', "mismatch")
    assert cause == "lost_update" and ev["confidence"] == "high"
    assert ev["overlapping_runs"] == [[racers[0]["id"], racers[1]["id"]]]
    assert ev["lost_runs"] == [racers[0]["id"]]  # its -3 was overwritten by the second run
    assert ev["first_divergence_at"].startswith(racers[1]["started_at"][:19])
    assert {r["id"] for r in ev["runs"]} == {r["id"] for r in _runs(backend, sku="SKU-003")}

    # Double apply on SKU-006: attempt 1 failed after committing, attempt 2 applied again.
    attempts = _runs(backend, sku="SKU-006", job_name="receive_stock")[-2:]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["status"] == "failed"
    cause, ev = evidence("inventory", '["SKU-006"]', "mismatch")
    assert cause == "double_apply" and ev["confidence"] == "high"
    assert ev["retried_runs"] == [attempts[1]["id"]]
    assert ev["retries"] == [[attempts[0]["id"], attempts[1]["id"]]]
    assert ev["overlapping_runs"] == []

    # Stale overwrite on order 1004: 'paid' (mark_paid) over the newer 'shipped'.
    paid, shipped = _runs(backend, order_id=1004)
    cause, ev = evidence("orders", "[1004]", "mismatch")
    assert cause == "stale_overwrite"
    assert ev["stale_row"]["value"] == "paid" and ev["stale_row"]["run_id"] == paid["id"]
    assert ev["overwritten_row"]["value"] == "shipped"
    assert ev["overwritten_row"]["run_id"] == shipped["id"]
    assert ev["overlapping_runs"] == [[paid["id"], shipped["id"]]]
    assert ev["jobs"] == ["mark_paid"]

    # Missing outbox write on SKU-009, blamed on the run that wrote the event.
    writer = _runs(backend, sku="SKU-009")[-1]
    row = by_key[("inventory", '["SKU-009"]', "unannounced_event")]
    assert json.loads(row["evidence"])["runs"][0]["id"] == writer["id"]
    assert json.loads(row["evidence"])["jobs"] == ["ship_stock"]

    # Rows no job touched.
    assert by_key[("inventory", '["SKU-GHOST"]', "orphan_row")]["cause"] == "unexplained_write"
    assert by_key[("orders", "[1041]", "missing_row")]["cause"] == "unexplained_write"

    counts = result.summary["counts"]
    assert counts["by_cause"] == {
        "lost_update": 1,
        "double_apply": 1,
        "stale_overwrite": 1,
        "unexplained_write": 2,
    }
    assert counts["by_job"]["ship_stock"]["by_cause"] == {"lost_update": 1, "unannounced_event": 1}
    assert counts["by_job"]["receive_stock"]["by_cause"] == {"double_apply": 1}
    assert counts["by_job"]["mark_paid"]["by_cause"] == {"stale_overwrite": 1}
    assert result.summary["fix_first"]["job"] == "ship_stock"
