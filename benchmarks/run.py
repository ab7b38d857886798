"""The benchmark harness: drift against the SQL lower bound and the pandas routes.

    python -m benchmarks.run --engine postgresql --scale M --repeat 3 --write-doc

Each contender runs in its own process, in rotation, ``--repeat`` times; the
harness reports the median wall time (process start to exit: what a user
waits for), the median time inside the process, and the peak RSS of that
process alone (``os.wait4``). Every run must find exactly the staged drift,
or the harness stops. Figures are ratios against the lower bound.

PostgreSQL and MariaDB data go to a dedicated ``drift_bench_<scale>`` database, dropped
at the end unless ``--keep``; SQLite data to ``--workdir``. A dataset already
there with the same scale, drift and seed is reused.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from benchmarks.generate import (
    SCALES,
    SPEC,
    existing,
    generate,
    inventory,
    order_events,
    orders,
    stock_events,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
BENCH_DB = "drift_bench_{scale}"  # one database per scale, so scales can be kept side by side
CONTENDERS = ("drift", "lower_bound", "pandas_merge", "datacompy")
LABELS = {
    "drift": "`drift audit` (end to end)",
    "lower_bound": "lower bound: hand-written SQL (server defaults)",
    "lower_bound_tuned": "lower bound: the same SQL under drift's session settings",
    "drift_jobs": "`drift audit --jobs 2` (end to end; entities in parallel)",
    "lower_bound_parallel": "lower bound, parallel: the tuned queries at once, one connection each",
    "pandas_merge": "pandas read + groupby + merge",
    "datacompy": "pandas read + groupby + datacompy",
    "since_last_first": "`drift audit --since-last`, first run (full, records marks)",
    "since_last": "`drift audit --since-last` after {n} new stream rows",
    "watch": "`drift check --since-last --every {every}s`: one process, each check after {n} "
    "new stream rows",
}

#: Seconds between the checks of ``drift check --every`` in the harness: room for
#: adding the new rows between two checks.
WATCH_EVERY = 5


@dataclass(frozen=True)
class Run:
    contender: str
    wall: float
    inner: float
    rss_mb: float
    drifted: int


def _python() -> str:
    return sys.executable


def measure(module: str, *args: str) -> tuple[float, float, str]:
    """Run ``python -m module args``; return (wall seconds, its peak RSS in MB, stdout).

    The peak RSS comes from the process itself (see :mod:`benchmarks.measure`).
    """
    with (
        tempfile.NamedTemporaryFile() as rss,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        command = [_python(), "-m", "benchmarks.measure", rss.name, module, *args]
        started = time.perf_counter()
        code = subprocess.call(command, stdout=out, stderr=err, cwd=ROOT)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        peak_kb = int(Path(rss.name).read_text() or 0)
    if code not in (0, 1):
        raise SystemExit(f"benchmark: {module} {args[:2]} failed ({code}):\n{stderr}")
    return wall, peak_kb / 1024, stdout


def run_contender(name: str, url: str, spec: Path, workdir: Path) -> Run:
    if name in ("drift", "drift_jobs"):
        out = workdir / "audit"
        shutil.rmtree(out, ignore_errors=True)
        args = ["-q", "audit", "-c", str(spec), "--db", url, "--out", str(out), "-f", "json"]
        if name == "drift_jobs":
            args += ["--jobs", "2"]
        wall, rss, stdout = measure("drift", *args)
        summary = json.loads(stdout)
        return Run(name, wall, summary["timings"]["total"], rss, summary["counts"]["drifted_rows"])
    wall, rss, stdout = measure("benchmarks.contenders", name, url)
    result = json.loads(stdout)
    return Run(name, wall, result["seconds"], rss, result["drifted"])


def add_events(url: str, count: int, seed: int) -> None:
    """New stream rows that change no rebuilt value: half stock adjustments (0 to
    on_hand), half order events repeating the order's last event's status."""
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            skus = conn.execute(sa.select(inventory.c.sku).limit(200_000)).scalars().all()
            order_ids = conn.execute(sa.select(orders.c.order_id).limit(200_000)).scalars().all()
            stamp = "2027-01-01T00:00:00"
            base = conn.execute(sa.select(sa.func.max(stock_events.c.id))).scalar_one()
            conn.execute(
                stock_events.insert(),
                [
                    {
                        "id": base + i + 1,
                        "sku": rng.choice(skus),
                        "kind": "adjusted",
                        "qty": 1,
                        "created_at": stamp,
                    }
                    for i in range(count // 2)
                ],
            )
            base = conn.execute(sa.select(sa.func.max(order_events.c.id))).scalar_one()
            picked = sorted(set(rng.sample(order_ids, count - count // 2)))
            # Each new order event repeats the order's last status: the rebuilt
            # state, and so the staged drift, stays exactly as generated.
            later = order_events.alias("later")
            newest = (
                sa.select(sa.func.max(later.c.id))
                .where(later.c.order_id == order_events.c.order_id)
                .scalar_subquery()
            )
            rank = sa.func.row_number().over(order_by=order_events.c.order_id)
            source = sa.select(
                (sa.literal(base) + rank).label("id"),
                order_events.c.order_id,
                order_events.c.new_status,
                sa.literal(stamp).label("created_at"),
            ).where(order_events.c.order_id.in_(picked), order_events.c.id == newest)
            conn.execute(
                order_events.insert().from_select(
                    ["id", "order_id", "new_status", "created_at"], source
                )
            )
    finally:
        engine.dispose()


def incremental(url: str, spec: Path, workdir: Path, count: int, repeat: int) -> list[Run]:
    """A first --since-last audit (full), then ``repeat`` times: add rows, audit again."""
    state = workdir / "bench-state.json"
    state.unlink(missing_ok=True)
    runs = []
    for i in range(repeat + 1):
        if i:
            add_events(url, count, seed=i)
        out = workdir / "audit"
        shutil.rmtree(out, ignore_errors=True)
        args = ["-q", "audit", "-c", str(spec), "--db", url, "--out", str(out), "-f", "json"]
        args += ["--since-last", "--state", str(state)]
        wall, rss, stdout = measure("drift", *args)
        summary = json.loads(stdout)
        name = "since_last" if i else "since_last_first"
        runs.append(Run(name, wall, summary["timings"]["total"], rss, -1))
        print(
            f"  {name:17} wall {wall:7.2f} s  inner {summary['timings']['total']:7.2f} s  "
            f"rss {rss:7.0f} MB  scope {summary['scope']}  findings {summary['counts']['total']}",
            file=sys.stderr,
        )
    return runs


def watching(url: str, spec: Path, workdir: Path, count: int, repeat: int) -> list[Run]:
    """``drift check --since-last --every``: ``repeat`` checks, each after ``count`` new rows.

    It starts from the marks of :func:`incremental`'s audits (a copy of their state
    file), so its first check is incremental too; that first check, which pays the
    process's start-up, is not counted. The rows are added after a check has printed
    its line and before the next one starts (checked: a late start would measure
    nothing new).
    """
    state = workdir / "bench-watch-state.json"
    shutil.copyfile(workdir / "bench-state.json", state)
    args = ["-q", "check", "-c", str(spec), "--db", url, "--since-last", "--state", str(state)]
    args += ["--every", f"{WATCH_EVERY}s", "--count", str(repeat + 1), "-f", "json"]
    runs = []
    with tempfile.NamedTemporaryFile() as rss:
        command = [_python(), "-m", "benchmarks.measure", rss.name, "drift", *args]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        added_at = None
        records = []
        for line in proc.stdout:
            record = json.loads(line)
            if "error" in record:
                proc.kill()
                raise SystemExit(f"benchmark: drift check --every failed: {record['error']}")
            started = dt.datetime.fromisoformat(record["started_at"]).timestamp()
            if added_at is not None and started < added_at:
                proc.kill()
                raise SystemExit("benchmark: a check started before the new rows were in")
            records.append(record)
            if len(records) <= repeat:
                add_events(url, count, seed=100 + len(records))
                added_at = time.time()
        if proc.wait() not in (0, 1):
            raise SystemExit(f"benchmark: drift check --every failed ({proc.returncode})")
        peak_mb = int(Path(rss.name).read_text() or 0) / 1024
    for record in records[1:]:
        runs.append(Run("watch", record["seconds"], record["duration_seconds"], peak_mb, -1))
        print(
            f"  watch check {record['check']}  wall {record['seconds']:7.2f} s  "
            f"inner {record['duration_seconds']:7.2f} s  findings {record['counts']['total']}",
            file=sys.stderr,
        )
    return runs


def server_url(engine: str, scale: str, create: bool) -> str:
    name = BENCH_DB.format(scale=scale.lower())
    admin = sa.create_engine(SERVERS[engine], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if engine == "postgresql":
                found = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if not found and create:
                    conn.exec_driver_sql(f"CREATE DATABASE {name}")
            elif create:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4")
    finally:
        admin.dispose()
    return make_url(SERVERS[engine]).set(database=name).render_as_string(hide_password=False)


def drop_server_db(engine: str, scale: str) -> None:
    name = BENCH_DB.format(scale=scale.lower())
    admin = sa.create_engine(SERVERS[engine], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if engine == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    finally:
        admin.dispose()


def machine(engine: str, url: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    e = sa.create_engine(url)
    try:
        with e.connect() as conn:
            if engine == "sqlite":
                version = "SQLite " + conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()
            else:
                version = str(conn.exec_driver_sql("SELECT version()").scalar_one())
                version = version.split(" on ")[0]
                # The server's page cache: what decides whether a table is read from disk.
                cache, query = PAGE_CACHE[engine]
                size = conn.exec_driver_sql(query).scalar_one()
                version += f" ({cache} {int(size) // 2**20} MiB)"
    finally:
        e.dispose()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "database": version,
        "speed": f"{python_speed():.2f} s",
    }


#: Each server's page cache: its setting and how to read its size in bytes.
PAGE_CACHE = {
    "postgresql": ("shared_buffers", "SELECT pg_size_bytes(current_setting('shared_buffers'))"),
    "mysql": ("innodb_buffer_pool_size", "SELECT @@GLOBAL.innodb_buffer_pool_size"),
}


def python_speed() -> float:
    """Seconds for a fixed pure-Python loop (the best of 3), to compare machines.

    Absolute figures (seconds, not ratios) move with the machine: the same code
    took 2-3x longer on one 2-core VM than on another with the same CPU name.
    """
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(5_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(
    runs: list[Run], contenders: list[str], base: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Median times and peak RSS per contender, as ratios to the baseline.

    The baseline is the strictest lower bound present (``lower_bound_tuned``,
    else ``lower_bound``), or the baseline row of ``base``.
    """
    by = {c: [r for r in runs if r.contender == c] for c in contenders}
    baseline = next((c for c in ("lower_bound_tuned", "lower_bound") if by.get(c)), None)
    base_wall = base_inner = None
    if base is not None:
        lower = next((r for r in base if r["baseline"]), None)
        if lower:
            base_wall, base_inner = float(lower["wall"]), float(lower["inner"])
    elif baseline:
        base_wall = median([r.wall for r in by[baseline]])
        base_inner = median([r.inner for r in by[baseline]])
    rows = []
    for name in contenders:
        wall = median([r.wall for r in by[name]])
        inner = median([r.inner for r in by[name]])
        rows.append(
            {
                "contender": name,
                "baseline": base is None and name == baseline,
                "wall": wall,
                "wall_ratio": wall / base_wall if base_wall else float("nan"),
                "inner": inner,
                "inner_ratio": inner / base_inner if base_inner else float("nan"),
                "rss_mb": max(r.rss_mb for r in by[name]),
            }
        )
    return rows


def markdown(
    engine: str,
    scale: str,
    rows: list[dict[str, Any]],
    info: dict[str, str],
    command: str,
    dataset: dict,
    repeat: int,
    note: str,
) -> str:
    n, e = SCALES[scale]
    drift_rss = next((r["rss_mb"] for r in rows if r["contender"] == "drift"), None)
    lines = [
        f"### {engine}, scale {scale} ({n:,} entities, {e:,} stream rows, "
        f"{dataset['drift']:.0%} drift = {dataset['drifted_keys']:,} drifted keys)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {info['cpu']}, {info['memory']} RAM; {info['os']}; Python {info['python']}; "
        f"{info['database']}; a pure-Python loop of 5M additions: {info['speed']}.  ",
        f"Median of {repeat} run(s) per contender, run in rotation; every run found exactly "
        f"{dataset['drifted_keys']:,} drifted keys.{(' ' + note) if note else ''}",
        "",
        "| contender | wall s | x baseline | in-process s | x baseline | peak RSS MB "
        "| RSS vs drift |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rss_vs = f"{r['rss_mb'] / drift_rss:.1f}x" if drift_rss else ""
        label = LABELS[str(r["contender"])] + (" **(baseline)**" if r["baseline"] else "")
        lines.append(
            f"| {label} | {r['wall']:.2f} | {_ratio(r['wall_ratio'])} "
            f"| {r['inner']:.2f} | {_ratio(r['inner_ratio'])} | {r['rss_mb']:.0f} | {rss_vs} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(value: float) -> str:
    """A ratio to the baseline; a dash when the run had no lower bound."""
    return "–" if math.isnan(value) else f"{value:.2f}"


def _script_section(title: str, script: list[str]) -> str:
    """Run a benchmark script once, in this run, and quote what it printed."""
    print(f"  {title}...", file=sys.stderr)
    done = subprocess.run(
        [_python(), *script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"benchmark: {script[0]} failed:\n{done.stderr}")
    printed = [line for line in done.stdout.splitlines() if not line.startswith("audit folder:")]
    return "\n".join(
        [
            "",
            f"#### {title}",
            "",
            f"Command (run by the harness, same machine, right after the contenders): "
            f"`python {shlex.join(script)}`",
            "",
            "```",
            *printed,
            "```",
            "",
        ]
    )


def write_doc(engine: str, scale: str, section: str) -> None:
    begin, end = f"<!-- bench:{engine}:{scale} -->", f"<!-- /bench:{engine}:{scale} -->"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        raise SystemExit(f"benchmark: {DOC} has no {begin} ... {end} markers for this section")
    DOC.write_text(text, encoding="utf-8")


#: drift's packages and the harness's own, compiled before anything is timed.
PACKAGES = ("audit", "remediate", "drift", "benchmarks")


def compile_bytecode() -> None:
    """Write the bytecode of drift's modules, as pip does when it installs the wheel.

    A checkout installed with ``pip install -e`` has none until Python writes it on
    first import, and never under ``PYTHONDONTWRITEBYTECODE`` (set on some machines and
    CI runners): every timed run would then compile drift's modules from source again,
    ~0.15 s that no installed drift pays.
    """
    for package in PACKAGES:
        if not compileall.compile_dir(str(ROOT / package), quiet=1):
            raise SystemExit(f"benchmark: cannot compile {package}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "mysql"), required=True)
    parser.add_argument("--scale", choices=SCALES, default="S")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated (default: {','.join(CONTENDERS)}, and lower_bound_tuned on "
        "PostgreSQL)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "drift-bench")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--write-doc", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a note for the doc (e.g. a shared machine)")
    parser.add_argument(
        "--incremental",
        type=int,
        default=0,
        metavar="N",
        help="also time --since-last audits after N new stream rows (changes the dataset)",
    )
    parser.add_argument(
        "--buffer-pool",
        type=int,
        default=0,
        metavar="MIB",
        help="MariaDB/MySQL: run with innodb_buffer_pool_size set to MIB (put back after)",
    )
    parser.add_argument(
        "--apply",
        type=int,
        default=0,
        metavar="N",
        help="PostgreSQL: also plan and apply N corrections (benchmarks/apply_100k.py)",
    )
    parser.add_argument(
        "--report",
        type=int,
        default=0,
        metavar="N",
        help="also render the report of N synthetic findings (benchmarks/report_render.py)",
    )
    args = parser.parse_args(argv)
    compile_bytecode()
    if args.contenders:
        contenders = args.contenders.split(",")
    else:
        contenders = list(CONTENDERS)
        if args.engine == "mysql":
            contenders.insert(2, "lower_bound_tuned")
        if args.engine == "postgresql":
            contenders.insert(2, "lower_bound_tuned")
            contenders[1:1] = ["drift_jobs"]
            contenders.insert(4, "lower_bound_parallel")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.engine == "sqlite":
        url = f"sqlite:///{args.workdir / f'bench-{args.scale}.db'}"
    else:
        url = server_url(args.engine, args.scale, create=True)
    spec = args.workdir / "drift.toml"
    spec.write_text(SPEC, encoding="utf-8")
    pool = buffer_pool(url, args.buffer_pool * 2**20) if args.buffer_pool else None
    try:
        engine = sa.create_engine(url)
        meta = existing(engine)
        engine.dispose()
        wanted = {"scale": args.scale, "drift": args.drift, "seed": args.seed}
        if meta and all(meta.get(k) == v for k, v in wanted.items()):
            print(f"reusing the {args.scale} dataset at {make_url(url).database}", file=sys.stderr)
            dataset = meta
        else:
            print(f"generating scale {args.scale}...", file=sys.stderr)
            dataset = generate(url, args.scale, args.drift, args.seed).__dict__
            print(f"generated in {dataset['seconds']} s", file=sys.stderr)
        runs: list[Run] = []
        for i in range(args.repeat):
            for name in contenders:
                run = run_contender(name, url, spec, args.workdir)
                print(
                    f"  run {i + 1} {name:13} wall {run.wall:7.2f} s  inner {run.inner:7.2f} s  "
                    f"rss {run.rss_mb:7.0f} MB  drifted {run.drifted}",
                    file=sys.stderr,
                )
                if run.drifted != dataset["drifted_keys"]:
                    raise SystemExit(
                        f"benchmark: {name} found {run.drifted} drifted keys, "
                        f"expected {dataset['drifted_keys']}"
                    )
                runs.append(run)
        rows = summarize(runs, contenders)
        if args.incremental:
            inc = incremental(url, spec, args.workdir, args.incremental, args.repeat)
            rows += summarize(inc, ["since_last_first", "since_last"], base=rows)
            LABELS["since_last"] = LABELS["since_last"].format(n=f"{args.incremental:,}")
            watch = watching(url, spec, args.workdir, args.incremental, args.repeat)
            rows += summarize(watch, ["watch"], base=rows)
            LABELS["watch"] = LABELS["watch"].format(n=f"{args.incremental:,}", every=WATCH_EVERY)
        command = "python -m benchmarks.run " + shlex.join(
            argv if argv is not None else sys.argv[1:]
        )
        section = markdown(
            args.engine,
            args.scale,
            rows,
            machine(args.engine, url),
            command,
            dataset,
            args.repeat,
            args.note,
        )
        if args.apply and args.engine == "postgresql":
            section += _script_section(
                f"Plan and apply of {args.apply:,} corrections",
                [
                    "benchmarks/apply_100k.py",
                    "--url",
                    SERVERS["postgresql"],
                    "--rows",
                    str(args.apply),
                ],
            )
        if args.report:
            section += _script_section(
                f"The report of {args.report:,} findings",
                ["benchmarks/report_render.py", "--findings", str(args.report)],
            )
        print(section)
        if args.write_doc:
            write_doc(args.engine, args.scale, section)
    finally:
        if pool is not None:
            buffer_pool(url, pool)
        if args.engine != "sqlite" and not args.keep:
            drop_server_db(args.engine, args.scale)
    return 0


def buffer_pool(url: str, size: int) -> int:
    """Resize MariaDB's buffer pool (a dynamic setting); returns the size it had.

    The server's default (128 MiB) holds a tenth of the L tables: an incremental
    audit's scattered reads of a few thousand keys' stream rows then come from disk
    each time (``O_DIRECT``), 0.25-0.3 s instead of 0.05 s for 500 touched keys.
    """
    if make_url(url).get_backend_name() != "mysql":
        raise SystemExit("benchmark: --buffer-pool is a MariaDB/MySQL setting")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            before = int(
                conn.exec_driver_sql("SELECT @@GLOBAL.innodb_buffer_pool_size").scalar_one()
            )
            conn.exec_driver_sql(f"SET GLOBAL innodb_buffer_pool_size = {int(size)}")
            # The resize runs in the background; wait until the server reports it done.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = conn.exec_driver_sql(
                    "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_resize_status'"
                ).first()
                if not status or not status[1] or "complete" in str(status[1]).lower():
                    break
                time.sleep(0.2)
    finally:
        engine.dispose()
    return before


if __name__ == "__main__":
    sys.exit(main())
