"""A tiny generic schema for fold tests: one event stream, one entity table.

``ev`` holds events keyed by (k1, k2); ``ent`` holds the current state. Tests
fill both with a handful of rows whose defects are documented in each test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.run import AuditResult

metadata = sa.MetaData()

ev = sa.Table(
    "ev",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k1", sa.String(64)),
    sa.Column("k2", sa.Integer),
    sa.Column("v", sa.BigInteger),
    sa.Column("s", sa.String(64)),
    sa.Column("kind", sa.String(16)),
    sa.Column("t", sa.String(32)),
)


def entity_table(unique: bool = True, extra: Iterable[sa.Column] = ()) -> sa.Table:
    md = sa.MetaData()
    cols = [
        sa.Column("k1", sa.String(64), nullable=not unique),
        sa.Column("k2", sa.Integer, nullable=not unique),
        sa.Column("total", sa.Integer),
        sa.Column("cnt", sa.Integer),
        sa.Column("lo", sa.Integer),
        sa.Column("hi", sa.Integer),
        sa.Column("first_s", sa.String(64)),
        sa.Column("last_s", sa.String(64)),
        *extra,
    ]
    if unique:
        cols.append(sa.PrimaryKeyConstraint("k1", "k2"))
    return sa.Table("ent", md, *cols)


ALL_COLUMNS = """
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "v"

[entities.ent.columns.cnt]
stream = "ev"
fold = "count"

[entities.ent.columns.lo]
stream = "ev"
fold = "min"
value = "v"

[entities.ent.columns.hi]
stream = "ev"
fold = "max"
value = "v"

[entities.ent.columns.first_s]
stream = "ev"
fold = "first"
value = "s"

[entities.ent.columns.last_s]
stream = "ev"
fold = "last"
value = "s"
"""


def spec_text(url: str, columns: str = ALL_COLUMNS, stream_extra: str = "") -> str:
    return f"""
version = 1
[database]
url = "{url}"

[streams.ev]
table = "ev"
key = ["k1", "k2"]
order_by = ["id"]
time = "t"
{stream_extra}

[entities.ent]
table = "ent"
key = ["k1", "k2"]
{columns}
"""


def load(
    backend: Any,
    events: list[Mapping[str, Any]],
    rows: list[Mapping[str, Any]],
    unique: bool = True,
    table: sa.Table | None = None,
) -> sa.Table:
    ent = table if table is not None else entity_table(unique)
    with backend.engine.begin() as conn:
        metadata.create_all(conn)
        ent.create(conn)
        if events:
            conn.execute(ev.insert(), [_event(i, e) for i, e in enumerate(events, 1)])
        if rows:
            conn.execute(ent.insert(), [dict(r) for r in rows])
    return ent


def _event(i: int, e: Mapping[str, Any]) -> dict[str, Any]:
    row = {"id": i, "k1": None, "k2": None, "v": None, "s": None, "kind": None, "t": None}
    row.update(e)
    return row


def audit(
    backend: Any,
    tmp_path: Path,
    columns: str = ALL_COLUMNS,
    name: str = "audit",
    stream_extra: str = "",
    **kwargs: Any,
) -> tuple[AuditResult, list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    spec = parse_spec(spec_text(backend.url, columns, stream_extra))
    result = run_audit(spec, out=tmp_path / name, write_report=False, **kwargs)
    return result, pq.read_table(result.findings_path).to_pylist()


def brief(rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """(key, column, kind, expected, actual) with JSON parsed, for exact comparison."""
    import json
    from decimal import Decimal

    def parse(text: str | None) -> Any:
        if text is None:
            return "ABSENT"
        value = json.loads(text, parse_float=Decimal)
        if isinstance(value, dict):
            return tuple(sorted((k, _norm(v)) for k, v in value.items()))
        return _norm(value)

    return {
        (
            tuple(json.loads(r["key"])),
            r["column"],
            r["kind"],
            parse(r["expected"]),
            parse(r["actual"]),
        )
        for r in rows
    }


def _norm(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        d = Decimal(value)
        return int(d) if d == d.to_integral_value() else d
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value
