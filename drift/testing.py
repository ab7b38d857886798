"""Concurrent integration tests for application teams.

Sequential tests cannot see races. These helpers run a job from several real
processes at once against a scratch database, then audit it with drift::

    from drift.testing import assert_no_drift, run_concurrently

    def test_ship_stock_has_no_race(drift_scratch_url):
        create_schema(drift_scratch_url)
        run_concurrently(ship_stock, drift_scratch_url, workers=4, iterations=50)
        assert_no_drift("drift.toml", drift_scratch_url)

A job is an importable function ``job(url, worker, iteration)`` (processes are
started with "spawn", so lambdas and closures cannot be sent to them). The
pytest plugin (registered as ``drift``) provides the ``drift_scratch_url``
fixture: a fresh SQLite database per test, or a scratch schema/database on the
server named by ``--drift-db`` / ``DRIFT_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.findings import read_findings
from audit.run import run_audit
from audit.spec import Spec

Job = Callable[[str, int, int], Any]
SHOW_PAIRS = 5  # race evidence lines per finding in a failure message


@dataclass(frozen=True)
class ConcurrentRun:
    """What a concurrent run did: how many iterations ran, and any worker errors."""

    workers: int
    iterations: int
    completed: int
    errors: tuple[str, ...]


def _worker(job: Job, url: str, worker: int, iterations: int, barrier: Any, queue: Any) -> None:
    completed = 0
    try:
        barrier.wait(timeout=60)
        for iteration in range(iterations):
            job(url, worker, iteration)
            completed += 1
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((worker, completed, traceback.format_exc()))
        return
    queue.put((worker, completed, None))


def run_concurrently(
    job: Job,
    url: str,
    workers: int = 4,
    iterations: int = 25,
    *,
    timeout: float = 300,
    raise_errors: bool = True,
) -> ConcurrentRun:
    """Run ``job(url, worker, iteration)`` from ``workers`` processes started together."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(job, url, w, iterations, barrier, queue), daemon=True)
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    results = []
    try:
        for _ in procs:
            results.append(queue.get(timeout=timeout))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = tuple(f"worker {w}: {err}" for w, _, err in results if err)
    run = ConcurrentRun(workers, iterations, sum(done for _, done, _ in results), errors)
    if errors and raise_errors:
        raise RuntimeError("a concurrent job failed:\n" + "\n".join(errors))
    return run


class DriftAssertionError(AssertionError):
    """The database drifted: the message lists the drifted rows and their evidence."""


def assert_no_drift(
    spec: Spec | str | Path,
    url: str | None = None,
    *,
    show: int = 20,
    keep: str | Path | None = None,
) -> None:
    """Audit ``url`` with ``spec``; fail with a readable message when anything drifted.

    ``keep`` keeps the audit folder (report included) for a failing test's
    artifacts; otherwise it is written to a temporary folder and removed.
    """
    with tempfile.TemporaryDirectory(prefix="drift-test-") as scratch:
        out = Path(keep) if keep is not None else Path(scratch) / "audit"
        result = run_audit(spec, db=url, out=out, write_report=keep is not None)
        if not result.drift_found:
            return
        rows = []
        for row in read_findings(result.findings_path):
            rows.append(row)
            if len(rows) >= show:
                break
    raise DriftAssertionError(describe(result.summary, rows, keep))


def describe(summary: dict[str, Any], rows: Sequence[dict[str, Any]], kept: Any = None) -> str:
    """The failure message: counts, then each drifted row with its evidence."""
    counts = summary["counts"]
    lines = [
        f"drift found {counts['total']} finding(s) in {counts['drifted_rows']} drifted row(s):"
    ]
    for row in rows:
        where = f"{row['entity']} {row['key']}"
        if row["column"]:
            where += f" .{row['column']}"
        line = f"  {where}: {row['kind']}"
        if row["expected"] is not None:
            line += f", expected {row['expected']}"
        if row["actual"] is not None:
            line += f", actual {row['actual']}"
        if row["delta"] is not None:
            line += f" (delta {row['delta']:g})"
        lines.append(line)
        lines.extend(_evidence_lines(row))
    if counts["total"] > len(rows):
        lines.append(f"  ... and {counts['total'] - len(rows)} more")
    if kept is not None:
        lines.append(f"audit folder: {kept}")
    return "\n".join(lines)


def _evidence_lines(row: dict[str, Any]) -> list[str]:
    """Cause and race evidence, when the audit attributed the finding."""
    lines = []
    cause = row.get("cause")
    evidence = row.get("evidence")
    if cause:
        lines.append(f"    cause: {cause}")
    if evidence:
        try:
            data = json.loads(evidence)
        except ValueError:
            return lines
        if data.get("why"):
            lines.append(f"    why: {data['why']}")
        runs = {r.get("id"): r for r in data.get("runs", []) if isinstance(r, dict)}
        pairs = data.get("overlapping_runs", [])
        for pair in pairs[:SHOW_PAIRS]:
            described = [_run(runs.get(run_id), run_id) for run_id in pair]
            lines.append("    overlapping runs: " + " and ".join(described))
        if len(pairs) > SHOW_PAIRS:
            lines.append(f"    ... and {len(pairs) - SHOW_PAIRS} more overlapping pair(s)")
        retried = data.get("retried_runs", [])
        for run_id in retried[:SHOW_PAIRS]:
            lines.append(f"    retried run: {_run(runs.get(run_id), run_id)}")
        if len(retried) > SHOW_PAIRS:
            lines.append(f"    ... and {len(retried) - SHOW_PAIRS} more retried run(s)")
    return lines


def _run(run: dict[str, Any] | None, run_id: Any) -> str:
    if not run:
        return f"#{run_id}"
    who = f" on {run['worker']}" if run.get("worker") else ""
    attempt = f" attempt {run['attempt']}" if run.get("attempt") is not None else ""
    return (
        f"#{run_id} {run.get('job', '')}{attempt}{who} "
        f"[{run.get('started_at')} .. {run.get('finished_at')}]"
    )


@contextmanager
def scratch_database(base_url: str | None, folder: Path) -> Iterator[str]:
    """A fresh, empty database URL, dropped afterwards.

    SQLite (``base_url`` None or sqlite): a new file in ``folder``. PostgreSQL:
    a new schema, selected through the URL's ``search_path``. MySQL/MariaDB: a
    new database.
    """
    if base_url is None or base_url.startswith("sqlite"):
        yield f"sqlite:///{folder / f'scratch-{uuid.uuid4().hex[:8]}.db'}"
        return
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from audit.database import parse_url

    url = parse_url(base_url)
    name = f"drift_t_{uuid.uuid4().hex[:12]}"
    backend = url.get_backend_name()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
                scratch = url.update_query_dict({"options": f"-csearch_path={name}"})
            else:
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                scratch = url.set(database=name).update_query_dict({"charset": "utf8mb4"})
        try:
            yield make_url(scratch).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                if backend == "postgresql":
                    conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
                else:
                    conn.execute(sa.text(f"DROP DATABASE `{name}`"))
    finally:
        admin.dispose()
