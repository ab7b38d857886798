"""Stream-row evidence: the last rows of each stream per drifted key, on every engine."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.evidence import EVIDENCE, collect_evidence, drifted_keys
from audit.findings import key_to_json, to_json
from audit.schema import bind_spec
from drift import demo


def _shop(backend, tmp_path):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    return spec, run_audit(spec, out=tmp_path / "audit", write_report=False)


def _stream_truth(backend, table, key_col, key, limit):
    with backend.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c[key_col] == key).order_by(table.c.id.desc()).limit(limit)
        ).all()
    return [to_json(dict(r._mapping)) for r in rows]


def test_evidence_holds_the_last_stream_rows_of_each_drifted_key(backend, tmp_path):
    spec, result = _shop(backend, tmp_path)
    evidence = pq.read_table(result.out_dir / EVIDENCE).to_pylist()
    findings = pq.read_table(result.findings_path).to_pylist()
    drifted = {(f["entity"], f["key"]) for f in findings if f["kind"] != "orphan_row"}
    assert {(e["entity"], e["key"]) for e in evidence} == drifted
    streams = {"inventory": (demo.stock_events, "sku"), "orders": (demo.order_events, "order_id")}
    for entity, key in drifted:
        (value,) = json.loads(key)
        table, column = streams[entity]
        rows = sorted(
            (e for e in evidence if (e["entity"], e["key"]) == (entity, key)),
            key=lambda e: e["position"],
        )
        assert [e["position"] for e in rows] == list(range(len(rows)))
        assert [e["row"] for e in rows] == _stream_truth(backend, table, column, value, 20)
        source = "stream:stock" if entity == "inventory" else "stream:order_events"
        assert {e["source"] for e in rows} == {source}
        assert json.loads(rows[0]["roles"])["order_by"] == ["id"]
        assert rows[0]["at"] is not None


def test_evidence_is_capped_and_fetched_in_batches(sqlite_backend, tmp_path):
    spec, result = _shop(sqlite_backend, tmp_path)
    folder = result.out_dir
    keys = drifted_keys(folder / "findings.parquet")
    assert keys == {
        "inventory": ['["SKU-GHOST"]', '["SKU-006"]', '["SKU-003"]', '["SKU-009"]'],
        "orders": ["[1041]", "[1004]"],
    }
    windowed: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if "row_number" in statement.lower():
            windowed.append(statement)

    engine = sqlite_backend.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.connect() as conn:
            bound = bind_spec(spec, conn)
            # 2 rows for each of SKU-006, SKU-003, SKU-009 and [1004]; [1041] has one event
            assert collect_evidence(conn, bound, folder, rows_per_key=2, batch_keys=500) == 9
            assert len(windowed) == 2  # one query per entity stream, not per key
            windowed.clear()
            collect_evidence(conn, bound, folder, rows_per_key=2, batch_keys=1)
            assert len(windowed) == 6  # one per drifted key: 4 inventory, 2 orders
            # The first two findings: the orphan (no stream rows) and [1041] (one event).
            assert collect_evidence(conn, bound, folder, keys_limit=2) == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    rows = pq.read_table(folder / EVIDENCE).to_pylist()
    assert {r["key"] for r in rows} == {key_to_json([1041])}


COMPOSITE_SPEC = """
version = 1
[streams.moves]
table = "moves"
key = ["region", "code"]
order_by = ["id"]
[entities.stock]
table = "stock"
key = ["region", "code"]
[entities.stock.columns.qty]
stream = "moves"
fold = "sum"
value = "qty"
"""


def test_evidence_for_composite_keys(backend, tmp_path):
    backend.execute(
        "CREATE TABLE moves (id INTEGER PRIMARY KEY, region INTEGER NOT NULL, "
        "code VARCHAR(20) NOT NULL, qty INTEGER NOT NULL)"
    )
    backend.execute(
        "CREATE TABLE stock (region INTEGER NOT NULL, code VARCHAR(20) NOT NULL, "
        "qty INTEGER NOT NULL, PRIMARY KEY (region, code))"
    )
    for i, (region, code, qty) in enumerate(
        [(1, "a", 5), (1, "a", 2), (1, "b", 1), (2, "a", 7), (2, "a", 1)], start=1
    ):
        backend.execute(
            "INSERT INTO moves (id, region, code, qty) VALUES (:i, :r, :c, :q)",
            i=i,
            r=region,
            c=code,
            q=qty,
        )
    backend.execute("INSERT INTO stock VALUES (1, 'a', 7), (1, 'b', 9), (2, 'a', 3)")
    spec = parse_spec(COMPOSITE_SPEC + f'[database]\nurl = "{backend.url}"\n')
    result = run_audit(spec, out=tmp_path / "audit", write_report=False)
    rows = pq.read_table(result.out_dir / EVIDENCE).to_pylist()
    got = sorted((r["key"], r["position"], json.loads(r["row"])["id"]) for r in rows)
    assert got == [('[1,"b"]', 0, 3), ('[2,"a"]', 0, 5), ('[2,"a"]', 1, 4)]
