"""Benchmark datasets: the demo shop's schema at scale, with a known amount of drift.

Two entities exercise both kinds of fold the audit compiles: ``inventory.on_hand``
is a sum over ``stock_events`` (a GROUP BY) and ``orders.status`` is the last
``order_events.new_status`` by id (a window). Half of the N entities are SKUs and
half are orders; half of the E stream rows are stock events and half order
events. Every entity gets at least one event, so only staged drift is drift.

A fraction ``drift`` of the entities is corrupted: 80% get a wrong value, 10%
lose their current row (missing rows) and 10% are replaced by a row no event
explains (orphans; the entity's real row is kept too). The exact number of
drifted keys is returned and stored in ``bench_meta``: every contender must find
exactly that many, or the harness fails.

Rows are written fast: COPY on PostgreSQL, batched inserts in one transaction
on SQLite and MariaDB. Arrays are built with numpy, never row by row in Python.

    python -m benchmarks.generate --engine sqlite --scale S
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

SCALES = {"S": (10_000, 100_000), "M": (100_000, 1_000_000), "L": (1_000_000, 10_000_000)}
STATUSES = np.array(["new", "paid", "packed", "shipped", "delivered", "cancelled", "refunded"])
KINDS = np.array(["received", "shipped", "adjusted"])
CHUNK = 500_000

SPEC = """\
# drift spec for the benchmark shop (the demo's spec, at scale).
version = 1

[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]
time = "created_at"

[streams.order_events]
table = "order_events"
key = ["order_id"]
order_by = ["id"]
time = "created_at"

[entities.inventory]
table = "inventory"
key = ["sku"]

[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "CASE WHEN kind = 'received' THEN qty WHEN kind = 'shipped' THEN -qty ELSE 0 END"

[entities.orders]
table = "orders"
key = ["order_id"]

[entities.orders.columns.status]
stream = "order_events"
fold = "last"
value = "new_status"
"""

metadata = sa.MetaData()
inventory = sa.Table(
    "inventory",
    metadata,
    sa.Column("sku", sa.String(32), primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
)
stock_events = sa.Table(
    "stock_events",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Index("stock_events_sku", "sku"),
)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(32), nullable=False),
)
order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("order_id", sa.Integer, nullable=False),
    sa.Column("new_status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Index("order_events_order_id", "order_id"),
)
bench_meta = sa.Table(
    "bench_meta",
    metadata,
    sa.Column("info", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class Dataset:
    """What was generated, and how much drift a correct audit must find."""

    scale: str
    entities: int
    events: int
    drift: float
    seed: int
    drifted_keys: int
    seconds: float = 0.0

    @property
    def signature(self) -> dict[str, object]:
        return {"scale": self.scale, "drift": self.drift, "seed": self.seed}


def _sku(ids: np.ndarray) -> np.ndarray:
    return np.char.add("SKU-", np.char.zfill(ids.astype(str), 8))


def _stamp(ids: np.ndarray) -> np.ndarray:
    base = np.datetime64("2026-01-01T00:00:00")
    return np.datetime_as_string(base + ids.astype("timedelta64[s]"), unit="s")


def build_arrays(n: int, e: int, drift: float, seed: int) -> tuple[dict[str, dict], int]:
    """Every table as columns of numpy arrays, and the number of drifted keys."""
    rng = np.random.default_rng(seed)
    n_sku, n_ord = n // 2, n - n // 2
    e_stock, e_ord = e // 2, e - e // 2

    sku_of = np.concatenate([np.arange(n_sku), rng.integers(0, n_sku, e_stock - n_sku)])
    kind = np.concatenate(
        [np.zeros(n_sku, dtype=int), rng.choice(3, e_stock - n_sku, p=[0.4, 0.55, 0.05])]
    )
    qty = rng.integers(1, 21, e_stock)
    signed = np.where(kind == 0, qty, np.where(kind == 1, -qty, 0))
    on_hand = np.bincount(sku_of, weights=signed, minlength=n_sku).astype(np.int64)

    order_of = np.concatenate([np.arange(n_ord), rng.integers(0, n_ord, e_ord - n_ord)])
    status = np.concatenate(
        [np.zeros(n_ord, dtype=int), rng.integers(1, len(STATUSES), e_ord - n_ord)]
    )
    _, last_rev = np.unique(order_of[::-1], return_index=True)
    last_status = status[e_ord - 1 - last_rev]

    drifted = 0
    sku_rows = np.ones(n_sku, dtype=bool)
    ord_rows = np.ones(n_ord, dtype=bool)
    order_status = last_status.copy()
    extra_skus = np.array([], dtype=int)
    extra_orders = np.array([], dtype=int)
    for count, rows, values, is_sku in (
        (int(n_sku * drift), sku_rows, on_hand, True),
        (int(n_ord * drift), ord_rows, order_status, False),
    ):
        picked = rng.choice(len(rows), count, replace=False)
        wrong, missing, orphan = np.split(picked, [int(count * 0.8), int(count * 0.9)])
        if is_sku:
            values[wrong] += rng.choice([-3, -2, -1, 1, 2, 5], len(wrong))
            extra_skus = n_sku + np.arange(len(orphan))
        else:
            values[wrong] = (values[wrong] + rng.integers(1, len(STATUSES), len(wrong))) % len(
                STATUSES
            )
            extra_orders = n_ord + np.arange(len(orphan))
        rows[missing] = False
        drifted += len(wrong) + len(missing) + len(orphan)

    sku_keys = np.concatenate([np.arange(n_sku)[sku_rows], extra_skus])
    ord_keys = np.concatenate([np.arange(n_ord)[ord_rows], extra_orders])
    tables = {
        "inventory": {
            "sku": _sku(sku_keys),
            "on_hand": np.concatenate([on_hand[sku_rows], np.full(len(extra_skus), 7)]),
        },
        "orders": {
            "order_id": ord_keys + 1,
            "status": STATUSES[
                np.concatenate([order_status[ord_rows], np.ones(len(extra_orders), int)])
            ],
        },
        "stock_events": {
            "id": np.arange(1, e_stock + 1),
            "sku": _sku(sku_of),
            "kind": KINDS[kind],
            "qty": qty,
            "created_at": _stamp(np.arange(e_stock)),
        },
        "order_events": {
            "id": np.arange(1, e_ord + 1),
            "order_id": order_of + 1,
            "new_status": STATUSES[status],
            "created_at": _stamp(np.arange(e_ord)),
        },
    }
    return tables, drifted


def _chunks(columns: dict[str, np.ndarray]):
    length = len(next(iter(columns.values())))
    for start in range(0, length, CHUNK):
        yield {name: values[start : start + CHUNK] for name, values in columns.items()}


def _write_postgresql(conn: Connection, name: str, columns: dict[str, np.ndarray]) -> None:
    raw = conn.connection.driver_connection
    cursor = raw.cursor()
    names = ", ".join(columns)
    with cursor.copy(f"COPY {name} ({names}) FROM STDIN") as copy:
        for chunk in _chunks(columns):
            lines = chunk[next(iter(chunk))].astype(str)
            for values in list(chunk.values())[1:]:
                lines = np.char.add(np.char.add(lines, "\t"), values.astype(str))
            buffer = io.StringIO()
            buffer.write("\n".join(lines.tolist()))
            buffer.write("\n")
            copy.write(buffer.getvalue())


def _write_batched(conn: Connection, table: sa.Table, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    for chunk in _chunks(columns):
        rows = [dict(zip(names, values)) for values in zip(*(chunk[n].tolist() for n in names))]
        conn.execute(table.insert(), rows)


def bench_engine(url: str) -> Engine:
    return sa.create_engine(url)


def existing(engine: Engine) -> dict | None:
    """The ``bench_meta`` of a dataset already in the database, if any."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("bench_meta"):
            return None
        info = conn.execute(sa.select(bench_meta.c.info)).scalar()
    return json.loads(info) if info else None


def generate(url: str, scale: str, drift: float = 0.01, seed: int = 42) -> Dataset:
    """(Re)create the benchmark tables at ``url`` and fill them."""
    started = time.perf_counter()
    n, e = SCALES[scale]
    tables, drifted = build_arrays(n, e, drift, seed)
    engine = bench_engine(url)
    backend = make_url(url).get_backend_name()
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            for table in metadata.sorted_tables:
                conn.execute(sa.schema.CreateTable(table))
            if backend == "sqlite":
                conn.exec_driver_sql("PRAGMA synchronous = OFF")
            for name, columns in tables.items():
                if backend == "postgresql":
                    _write_postgresql(conn, name, columns)
                else:
                    _write_batched(conn, metadata.tables[name], columns)
            dataset = Dataset(
                scale=scale, entities=n, events=e, drift=drift, seed=seed, drifted_keys=drifted
            )
            conn.execute(bench_meta.insert().values(info=json.dumps(asdict(dataset))))
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn)
        with engine.connect() as conn:
            if backend == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
            elif backend == "sqlite":
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
            else:
                for name in tables:
                    conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()
    finally:
        engine.dispose()
    return Dataset(**{**asdict(dataset), "seconds": round(time.perf_counter() - started, 2)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="database URL to (re)fill")
    parser.add_argument("--scale", choices=SCALES, default="S")
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    dataset = generate(args.url, args.scale, args.drift, args.seed)
    print(json.dumps(asdict(dataset)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
