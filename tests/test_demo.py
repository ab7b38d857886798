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
    assert len(rows) == 5
    assert result.summary["counts"]["by_kind"] == {"mismatch": 3, "missing_row": 1, "orphan_row": 1}
