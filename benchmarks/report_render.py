"""Benchmark: render the report of a synthetic audit with a million findings.

    python benchmarks/report_render.py [--findings 1000000] [--keep DIR]

Builds an audit folder (summary.json, findings.parquet, evidence.parquet with
20 stream rows for each key the report embeds) without a database, then times
``render_report`` and prints the time and the size of report.html. The target
(issue 3): under 5 seconds and under 10 MB for a million findings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.evidence import EVIDENCE, EVIDENCE_SCHEMA, drifted_keys  # noqa: E402
from audit.findings import findings_schema  # noqa: E402
from audit.report import render_report  # noqa: E402


def build_folder(folder: Path, n: int, seed: int = 1) -> None:
    """A synthetic audit folder: two entities, mostly mismatches, some row kinds."""
    rng = np.random.default_rng(seed)
    entity = np.where(rng.random(n) < 0.7, "inventory", "accounts")
    ids = np.arange(n)
    key = np.char.add(np.char.add('["K-', ids.astype(str)), '"]')
    kinds = rng.choice(["mismatch", "missing_row", "orphan_row"], size=n, p=[0.98, 0.01, 0.01])
    mismatch = kinds == "mismatch"
    column = np.where(entity == "inventory", "on_hand", "balance")
    expected = rng.integers(0, 10_000, n)
    delta = np.round(rng.standard_t(2, n) * 20).astype(np.int64)
    actual = expected - delta
    base = np.datetime64("2026-03-14T09:00:00")
    seconds = rng.integers(0, 6 * 3600, n)
    times = np.datetime_as_string(base + seconds.astype("timedelta64[s]")) + "Z"
    table = pa.table(
        {
            "entity": entity,
            "key": key,
            "column": pa.array(np.where(mismatch, column, None), type=pa.string()),
            "kind": kinds,
            "expected": pa.array(
                np.where(
                    kinds == "orphan_row", None, np.where(mismatch, expected.astype(str), "{}")
                ),
                type=pa.string(),
            ),
            "actual": pa.array(
                np.where(
                    kinds == "missing_row", None, np.where(mismatch, actual.astype(str), "{}")
                ),
                type=pa.string(),
            ),
            "delta": pa.array(np.where(mismatch, delta.astype(float), np.nan), from_pandas=True),
            "last_event_at": pa.array(np.where(kinds == "orphan_row", None, times)),
            "extra": pa.nulls(n, pa.string()),
            "cause": pa.nulls(n, pa.string()),
            "evidence": pa.nulls(n, pa.string()),
        },
        schema=findings_schema(),
    )
    pq.write_table(table, folder / "findings.parquet", compression="zstd", row_group_size=100_000)
    by_entity = {name: int((entity == name).sum()) for name in ("inventory", "accounts")}
    summary = {
        "tool": "drift",
        "version": "bench",
        "created_at": "2026-03-14T16:00:00+00:00",
        "spec": {"path": "drift.toml", "sha256": "0" * 64},
        "database": {"url": "postgresql+psycopg://app:***@db/shop", "dialect": "postgresql"},
        "snapshot": {"taken_at": "2026-03-14T15:59:59+00:00", "isolation": "REPEATABLE READ"},
        "scope": "full",
        "watermarks": {"stock": {"order_by": ["id"], "value": [5_000_000], "rows": 5_000_000}},
        "rows_scanned": {
            "entities": {"inventory": 800_000, "accounts": 400_000},
            "streams": {"stock": 5_000_000},
        },
        "entities": {
            "inventory": {
                "table": "inventory",
                "key": ["sku"],
                "columns": {"on_hand": {"fold": "sum", "stream": "stock"}},
            },
            "accounts": {
                "table": "accounts",
                "key": ["id"],
                "columns": {"balance": {"fold": "sum", "stream": "stock"}},
            },
        },
        "counts": {
            "total": n,
            "by_kind": {
                k: int((kinds == k).sum()) for k in ("mismatch", "missing_row", "orphan_row")
            },
            "by_entity": {
                name: {"total": c, "drifted_rows": c, "by_kind": {}, "by_column": {}}
                for name, c in by_entity.items()
            },
            "drifted_rows": n,
            "abs_delta": {},
        },
        "command": "drift audit -c drift.toml --db 'postgresql://app:***@db/shop'",
    }
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    rows = []
    for name, keys in drifted_keys(folder / "findings.parquet").items():
        for k in keys:
            for position in range(20):
                rows.append(
                    {
                        "entity": name,
                        "key": k,
                        "source": "stream:stock",
                        "position": position,
                        "at": "2026-03-14T09:00:00Z",
                        "row": json.dumps(
                            {
                                "id": 1000 + position,
                                "sku": json.loads(k)[0],
                                "kind": "shipped",
                                "qty": position % 7,
                                "job_run_id": 77 + position,
                                "created_at": "2026-03-14T09:00:00Z",
                            }
                        ),
                        "roles": '{"key": ["sku"], "order_by": ["id"], "time": "created_at"}',
                    }
                )
    pq.write_table(pa.Table.from_pylist(rows, schema=EVIDENCE_SCHEMA), folder / EVIDENCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build the folder here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="drift-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        build_folder(folder, args.findings)
        print(f"built a {args.findings:,}-finding audit folder in {time.perf_counter() - t:.1f} s")
        # findings.csv is written with the audit folder; time the render alone.
        (folder / "findings.csv").write_text("", encoding="utf-8")
        t = time.perf_counter()
        path = render_report(folder)
        elapsed = time.perf_counter() - t
        size = path.stat().st_size
        print(f"render_report: {elapsed:.2f} s, report.html {size / 1e6:.2f} MB")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
