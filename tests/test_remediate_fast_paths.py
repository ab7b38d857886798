"""apply's fast paths give what the plain ones give.

* verify (inside apply, and ``drift verify``) checks all of a plan's keys in one
  query when they travel as one parameter (PostgreSQL's typed arrays), and must
  find the same findings, in the same order, as queries of ``CHUNK`` keys.
* the set-based update reads its locked rows by position and counts duplicate
  keys only when there are some; each guard failure keeps its reason.
"""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.dialects import get_dialect
from audit.schema import bind_spec
from remediate import verify
from remediate.apply import apply_plan
from remediate.plan import PlanOptions, build_plan, write_plan

SPEC = """\
version = 1
[database]
url = "{url}"
[streams.moves]
table = "moves"
key = ["k"]
order_by = ["{order_by}"]
[entities.stock]
table = "stock"
key = ["k"]
[entities.stock.columns.qty]
stream = "moves"
fold = "{fold}"
value = "qty"
"""


def _tables(key_type: sa.types.TypeEngine, unique: bool) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    meta = sa.MetaData()
    moves = sa.Table(
        "moves",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("k", key_type, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    stock = sa.Table(
        "stock",
        meta,
        sa.Column("k", key_type, primary_key=unique, autoincrement=False, nullable=False),
        sa.Column("qty", sa.Integer),
    )
    return meta, moves, stock


@pytest.mark.parametrize("text_keys", [True, False], ids=["text", "integer"])
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "duplicates"])
def test_verify_in_one_query_finds_what_chunks_find(backend, monkeypatch, text_keys, unique):
    """300 keys in plan order (not the database's), chunks of 50: drifted, missing,
    orphan, duplicated and clean keys in every chunk; one query or six, the same list."""
    meta, moves, stock = _tables(sa.String(20) if text_keys else sa.Integer, unique)

    def key(i: int) -> object:
        return f"K-{i}" if text_keys else i

    events, rows = [], []
    for i in range(300):
        events.append({"id": i + 1, "k": key(i), "qty": i % 7})
        if i % 11 == 3:
            continue  # missing row
        rows.append({"k": key(i), "qty": i % 7 + (1 if i % 5 == 0 else 0)})
        if not unique and i % 37 == 4:
            rows.append({"k": key(i), "qty": 0})  # a duplicate key
    rows += [{"k": key(i), "qty": 1} for i in range(300, 320)]  # orphans
    with backend.engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(moves.insert(), events)
        conn.execute(stock.insert(), rows)

    spec = parse_spec(SPEC.format(url=backend.url, order_by="id", fold="sum"))
    keys = [(key(i),) for i in range(320)]
    random.Random(7).shuffle(keys)
    dialect = get_dialect(backend.name)
    monkeypatch.setattr(verify, "CHUNK", 50)

    def reaudit(array_chunk: int) -> list[tuple]:
        monkeypatch.setattr(verify, "ARRAY_CHUNK", array_chunk)
        with backend.engine.connect() as conn:
            bound = bind_spec(spec, conn)
            found = verify.reaudit(conn, bound, dialect, {"stock": keys})
            conn.rollback()
        # A duplicated key's rows come in no set order (ORDER BY has only the key),
        # with or without chunks.
        return [
            (f.key, f.kind, f.column, f.expected, sorted(f.actual, key=repr))
            if f.kind == "duplicate_key"
            else (f.key, f.kind, f.column, f.expected, f.actual)
            for f in found
        ]

    queries: list[int] = []
    run_diff = verify.run_diff
    monkeypatch.setattr(verify, "run_diff", lambda *a: queries.append(1) or run_diff(*a))
    chunked = reaudit(50)
    assert len(queries) == 7  # 320 keys, 50 a query
    queries.clear()
    whole = reaudit(1000)
    assert len(queries) == (1 if backend.name == "postgresql" else 7)
    kinds = {kind for _, kind, *_ in chunked}
    assert {"mismatch", "missing_row", "orphan_row"} <= kinds
    assert ("duplicate_key" in kinds) == (not unique)
    assert whole == chunked
    # The order is the chunks' (plan order), not one sort over every key.
    assert whole != sorted(whole, key=lambda f: f[0])


def test_a_spec_error_in_one_query_names_the_key_the_chunks_named(backend, monkeypatch):
    """Two keys whose events tie on order_by (a last fold needs a total order), the
    later one in the database's order first in plan order: the error names it, as
    the chunks did, not the one the single query meets first."""
    from audit.errors import SpecError

    meta, moves, stock = _tables(sa.String(20), unique=True)
    moves.append_column(sa.Column("seq", sa.Integer, nullable=False))
    events = [{"id": i + 1, "k": f"K-{i:03}", "qty": 1, "seq": i} for i in range(100)]
    events += [
        {"id": 201, "k": "K-010", "qty": 2, "seq": 10},
        {"id": 202, "k": "K-090", "qty": 2, "seq": 90},
    ]
    with backend.engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(moves.insert(), events)
        conn.execute(stock.insert(), [{"k": f"K-{i:03}", "qty": 1} for i in range(100)])
    spec = parse_spec(SPEC.format(url=backend.url, order_by="seq", fold="last"))
    keys = [(f"K-{i:03}",) for i in range(50, 100)] + [(f"K-{i:03}",) for i in range(50)]
    monkeypatch.setattr(verify, "CHUNK", 50)
    with backend.engine.connect() as conn:
        bound = bind_spec(spec, conn)
        with pytest.raises(SpecError, match=r'rows of key \["K-090"\] tie'):
            verify.reaudit(conn, bound, get_dialect(backend.name), {"stock": keys})
        conn.rollback()


def test_an_unknown_key_in_one_query_falls_back_to_chunks():
    """A finding whose key is not one of the keys (a NULL key, a collation that
    equates texts) cannot be put in its chunk: the caller then queries the chunks."""
    from audit.findings import MISMATCH, Finding

    def finding(k: object) -> Finding:
        return Finding(entity="e", key=(k,), kind=MISMATCH, column="c", expected=1, actual=2)

    keys = [("b",), ("a",)]
    ordered = verify._in_chunk_order([finding("a"), finding("b")], keys)
    assert ordered is not None and [f.key for f in ordered] == [("a",), ("b",)]  # one chunk
    assert verify._in_chunk_order([finding("a"), finding("A")], keys) is None
    assert verify._in_chunk_order([finding(None)], keys) is None
    assert verify._in_chunk_order([], keys) == []


def test_each_guard_failure_of_a_set_based_update_keeps_its_reason(backend, tmp_path):
    """A dry run of a cas plan after the audit: one row as audited, one deleted, one
    changed, one whose key now matches two rows (neither as audited). The first
    applies, each other fails with its own reason."""
    meta, moves, stock = _tables(sa.String(20), unique=False)
    with backend.engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(
            moves.insert(),
            [{"id": i + 1, "k": k, "qty": 5} for i, k in enumerate("abcd")],
        )
        conn.execute(stock.insert(), [{"k": k, "qty": 4} for k in "abcd"])
    out = tmp_path / "audit"
    run_audit(
        parse_spec(SPEC.format(url=backend.url, order_by="id", fold="sum")),
        out=out,
        write_report=False,
    )
    write_plan(out, build_plan(out, PlanOptions(all_cas=True)))
    with backend.engine.begin() as conn:
        conn.execute(stock.delete().where(stock.c.k == "b"))
        conn.execute(stock.update().where(stock.c.k == "c").values(qty=99))
        conn.execute(stock.update().where(stock.c.k == "d").values(qty=98))
        conn.execute(stock.insert().values(k="d", qty=97))

    result = apply_plan(out, backend.url, dry_run=True)
    assert [(c["key"], c["before"], c["after"]) for c in result.changes] == [('["a"]', 4, 5)]
    assert [(f["key"], f["reason"]) for f in result.guard_failures] == [
        ('["b"]', "the row is gone"),
        ('["c"]', "the value changed since the audit (now 99)"),
        ('["d"]', "the key matches 2 rows"),
    ]
