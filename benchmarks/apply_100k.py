"""Benchmark: plan and apply 100,000 corrections on PostgreSQL (not a test).

    python benchmarks/apply_100k.py [--url postgresql://postgres@127.0.0.1/test] [--rows 100000]

Builds a scratch schema with N inventory rows, one stock event each, and a
drifted on_hand on every row; then times the audit (which writes the plan),
approve, and drift apply (one transaction, set-based, verified), and drops the
schema.
"""

from __future__ import annotations

import argparse
import time
import uuid

import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan
from remediate.approval import approve

SPEC = """\
version = 1
[database]
url = "{url}"
[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]
[entities.inventory]
table = "inventory"
key = ["sku"]
[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "qty"
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", default=f"/tmp/drift-bench-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args()
    schema = f"drift_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.engine.make_url(args.url).update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url_text)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE inventory (sku varchar(32) PRIMARY KEY, on_hand integer NOT NULL)"
            )
            conn.exec_driver_sql(
                "CREATE TABLE stock_events (id bigserial PRIMARY KEY, sku varchar(32) NOT NULL, "
                "qty integer NOT NULL)"
            )
            conn.exec_driver_sql(
                "INSERT INTO stock_events (sku, qty) SELECT 'SKU-' || g, g %% 50 "
                f"FROM generate_series(1, {args.rows}) g"
            )
            conn.exec_driver_sql(
                "INSERT INTO inventory SELECT 'SKU-' || g, g %% 50 + 1 "
                f"FROM generate_series(1, {args.rows}) g"
            )
        spec = parse_spec(SPEC.format(url=url_text))
        t = time.perf_counter()
        result = run_audit(spec, out=args.out, write_report=False)
        audit_plan = time.perf_counter() - t
        approve(result.out_dir, "bench")
        t = time.perf_counter()
        applied = apply_plan(result.out_dir, url_text)
        apply_time = time.perf_counter() - t
        print(f"rows: {args.rows}, findings: {result.finding_count}")
        print(f"audit + plan (fix.sql, rollback.sql): {audit_plan:.1f} s")
        print(
            f"apply (one transaction, verified): {apply_time:.1f} s, "
            f"{applied.rows_changed} rows changed"
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
