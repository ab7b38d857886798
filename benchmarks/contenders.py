"""The contenders drift is measured against, each run in its own process.

``python -m benchmarks.contenders NAME URL`` prints one JSON line:
``{"drifted": <keys found>, "seconds": <time inside the process>}``.

* ``lower_bound``: one hand-written SQL query per entity that returns the
  drifted rows, computed inside the database: the least work any tool that
  reports drifted rows must do. Only the database driver is imported.
* ``lower_bound_tuned`` (PostgreSQL, MariaDB): the same queries under the
  session settings drift's audit uses (``PostgresDialect``: JIT off, no plain or
  index-only scans during a full diff; ``MySQLDialect``: derived tables
  materialized, not merged), so the ratio compares query shapes, not planner
  settings.
* ``lower_bound_parallel`` (PostgreSQL): the tuned queries, each on its own
  connection, all at once: the lower bound for ``drift audit --jobs 2``.
* ``pandas_merge``: what a user would write instead: read the four tables into
  pandas, rebuild with groupby, outer-merge with the current rows, compare.
* ``datacompy``: the same rebuild, compared with ``datacompy.Compare``.

The drifted-key count is how the harness checks that every contender found
exactly the staged drift; a fast wrong answer is not a result.
"""

from __future__ import annotations

import json
import sys
import time

SUM_EXPR = "CASE WHEN kind = 'received' THEN qty WHEN kind = 'shipped' THEN -qty ELSE 0 END"

_EXPECTED_STOCK = f"SELECT sku, SUM({SUM_EXPR}) AS on_hand FROM stock_events GROUP BY sku"
_EXPECTED_ORDERS = (
    "SELECT order_id, new_status FROM ("
    "SELECT order_id, new_status, "
    "ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY id DESC) AS rn FROM order_events"
    ") w WHERE rn = 1"
)


def lower_bound_queries(backend: str) -> list[str]:
    """The hand-written drift queries, per database (MariaDB has no FULL JOIN)."""
    stock = (
        "e.sku IS NULL OR i.sku IS NULL OR e.on_hand <> i.on_hand",
        "i.sku, e.sku, e.on_hand, i.on_hand",
        f"({_EXPECTED_STOCK}) e",
        "inventory i",
        "i.sku = e.sku",
        "e.sku IS NULL",
    )
    orders = (
        "e.order_id IS NULL OR o.order_id IS NULL OR e.new_status <> o.status",
        "o.order_id, e.order_id, e.new_status, o.status",
        f"({_EXPECTED_ORDERS}) e",
        "orders o",
        "o.order_id = e.order_id",
        "e.order_id IS NULL",
    )
    queries = []
    for where, cols, expected, current, on, no_expected in (stock, orders):
        if backend == "mysql":
            queries.append(
                f"SELECT {cols} FROM {expected} LEFT JOIN {current} ON {on} WHERE {where} "
                f"UNION ALL SELECT {cols} FROM {current} LEFT JOIN {expected} ON {on} "
                f"WHERE {no_expected}"
            )
        else:
            queries.append(
                f"SELECT {cols} FROM {expected} FULL OUTER JOIN {current} ON {on} WHERE {where}"
            )
    return queries


#: The settings of drift's PostgreSQL audit snapshot (audit/dialects.py), for
#: ``lower_bound_tuned``; tests/test_docs_perf.py keeps the two in step.
PG_AUDIT_SETTINGS = (
    "SET jit = off",
    "SET enable_indexscan = off",
    "SET enable_indexonlyscan = off",
)


#: The settings of drift's MariaDB full diff (``MySQLDialect.whole_table_settings``).
MYSQL_AUDIT_SETTINGS = (
    "SET SESSION optimizer_switch = 'derived_merge=off'",
    "SET SESSION max_heap_table_size = GREATEST(@@SESSION.max_heap_table_size, 268435456)",
    "SET SESSION tmp_table_size = GREATEST(@@SESSION.tmp_table_size, 268435456)",
)


def _raw_connection(url: str):  # type: ignore[no-untyped-def]
    """A plain DB-API connection, without SQLAlchemy (the lower bound imports little)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    backend = parts.scheme.split("+")[0]
    if backend == "sqlite":
        import sqlite3

        return backend, sqlite3.connect(url.split(":///", 1)[1])
    if backend == "postgresql":
        import psycopg

        conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        return backend, psycopg.connect(conninfo)
    import pymysql

    return backend, pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        database=parts.path.lstrip("/"),
        cursorclass=pymysql.cursors.SSCursor,
    )


def lower_bound(url: str, tuned: bool = False) -> int:
    backend, conn = _raw_connection(url)
    try:
        if tuned and backend == "postgresql":
            for statement in PG_AUDIT_SETTINGS:
                conn.execute(statement)
        if tuned and backend == "mysql":
            with conn.cursor() as cursor:
                for statement in MYSQL_AUDIT_SETTINGS:
                    cursor.execute(statement)
        drifted = 0
        for query in lower_bound_queries(backend):
            cursor = conn.cursor()
            cursor.execute(query)
            while rows := cursor.fetchmany(10_000):
                drifted += len(rows)
            cursor.close()
        return drifted
    finally:
        conn.close()


def lower_bound_parallel(url: str) -> int:
    """The tuned queries at once, one connection and thread each (psycopg waits without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(query: str) -> int:
        backend, conn = _raw_connection(url)
        try:
            for statement in PG_AUDIT_SETTINGS:
                conn.execute(statement)
            cursor = conn.cursor()
            cursor.execute(query)
            found = 0
            while rows := cursor.fetchmany(10_000):
                found += len(rows)
            return found
        finally:
            conn.close()

    queries = lower_bound_queries("postgresql")
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        return sum(pool.map(one, queries))


def _frames(url: str):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stock = pd.read_sql_query("SELECT id, sku, kind, qty FROM stock_events", conn)
        events = pd.read_sql_query("SELECT id, order_id, new_status FROM order_events", conn)
        inventory = pd.read_sql_query("SELECT sku, on_hand FROM inventory", conn)
        orders = pd.read_sql_query("SELECT order_id, status FROM orders", conn)
    engine.dispose()
    stock["signed"] = np.where(
        stock["kind"] == "received",
        stock["qty"],
        np.where(stock["kind"] == "shipped", -stock["qty"], 0),
    )
    expected_stock = stock.groupby("sku", as_index=False)["signed"].sum()
    expected_stock = expected_stock.rename(columns={"signed": "on_hand"})
    expected_orders = (
        events.sort_values("id")
        .groupby("order_id", as_index=False)
        .last()[["order_id", "new_status"]]
        .rename(columns={"new_status": "status"})
    )
    return (expected_stock, inventory, "sku"), (expected_orders, orders, "order_id")


def pandas_merge(url: str) -> int:
    drifted = 0
    for expected, current, key in _frames(url):
        merged = expected.merge(current, on=key, how="outer", suffixes=("_e", "_a"), indicator=True)
        value = [c for c in expected.columns if c != key][0]
        differs = merged[f"{value}_e"] != merged[f"{value}_a"]
        drifted += int(((merged["_merge"] != "both") | differs).sum())
    return drifted


def datacompy_compare(url: str) -> int:
    import datacompy

    drifted = 0
    for expected, current, key in _frames(url):
        compare = datacompy.PandasCompare(expected, current, join_columns=key)
        drifted += len(compare.all_mismatch()) + len(compare.df1_unq_rows)
        drifted += len(compare.df2_unq_rows)
    return drifted


CONTENDERS = {
    "lower_bound": lower_bound,
    "lower_bound_tuned": lambda url: lower_bound(url, tuned=True),
    "lower_bound_parallel": lower_bound_parallel,
    "pandas_merge": pandas_merge,
    "datacompy": datacompy_compare,
}


def main(argv: list[str] | None = None) -> int:
    name, url = (argv if argv is not None else sys.argv[1:])[:2]
    started = time.perf_counter()
    drifted = CONTENDERS[name](url)
    print(json.dumps({"drifted": drifted, "seconds": round(time.perf_counter() - started, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
