"""Benchmark: plan and apply 100,000 corrections on PostgreSQL (not a test).

    python benchmarks/apply_100k.py [--url postgresql://postgres@127.0.0.1/test] [--rows 100000]

Builds a scratch schema with N inventory rows, one stock event each, and a
drifted on_hand on every row; then times the audit (which writes the proposed
plan: its time is split off by the audit's progress messages), planning again on
its own (build_plan, then write_plan: plan.json, fix.sql, rollback.sql), the
check that every action's data renders to its stored statements (``check_actions``:
apply's, one operation, and approve's, both; medians of ``--repeat``), and
drift apply of that plan (one transaction, set-based, verified), and drops the
schema. The audit folder is kept (``--out``) for profiling the plan offline.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan
from remediate.approval import approve
from remediate.plan import PLAN_DIR, build_plan, check_actions, load_plan, write_plan

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
    parser.add_argument("--repeat", type=int, default=5, help="runs of each check")
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
        stamps: list[tuple[float, str]] = []
        started = time.perf_counter()
        result = run_audit(
            spec,
            out=args.out,
            write_report=False,
            progress=lambda m: stamps.append((time.perf_counter(), m)),
        )
        finished = time.perf_counter()
        # run_audit says this just before it writes the proposed plan, its last step.
        planned = next(s for s, m in stamps if m.startswith("writing the proposed"))
        t = time.perf_counter()
        plan = build_plan(result.out_dir)
        built = time.perf_counter() - t
        t = time.perf_counter()
        write_plan(result.out_dir, plan)
        written = time.perf_counter() - t
        folder = result.out_dir / PLAN_DIR
        stored = load_plan(folder)
        checks = {}
        for label, operations in (
            ("apply's (fix)", ("fix",)),
            ("approve's (both)", ("fix", "rollback")),
        ):
            runs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                check_actions(folder, stored, operations)
                runs.append(time.perf_counter() - t)
            checks[label] = statistics.median(runs)
        approve(result.out_dir, "bench")
        steps: list[tuple[float, str]] = []
        t = time.perf_counter()
        applied = apply_plan(
            result.out_dir, url_text, progress=lambda m: steps.append((time.perf_counter(), m))
        )
        apply_time = time.perf_counter() - t
        # apply says "applying ..." once the plan is checked and the target bound and locked,
        # and "verifying ..." once the rows are changed and recorded.
        changing = next(s for s, m in steps if m.startswith("applying"))
        verifying = next(s for s, m in steps if m.startswith("verifying"))
        timings = result.summary.get("timings", {})
        print(f"rows: {args.rows}, findings: {result.finding_count}")
        print(f"audit + plan (fix.sql, rollback.sql): {finished - started:.1f} s")
        print(f"  audit: {planned - started:.1f} s", end="")
        print(" (" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
        print(f"  proposed plan: {finished - planned:.1f} s")
        print(f"plan on its own: build_plan {built:.1f} s, write_plan {written:.1f} s")
        print(
            "check_actions, median of "
            + f"{args.repeat}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in checks.items())
        )
        print(
            f"apply (one transaction, verified): {apply_time:.1f} s, "
            f"{applied.rows_changed} rows changed"
        )
        print(
            f"  checks, bind, lock: {changing - t:.1f} s, change and record: "
            f"{verifying - changing:.1f} s, verify and commit: {t + apply_time - verifying:.1f} s"
        )
        print(f"audit folder: {result.out_dir}")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":
    main()
