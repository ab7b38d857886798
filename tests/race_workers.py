"""Real worker processes that race, for tests/test_race_attribution.py.

Each worker is a separate process (multiprocessing, spawn) with its own
connection. It runs two kinds of jobs and logs every run in ``job_runs``:

* ``bump``: a racy read-modify-write of ``counters.n`` (read, sleep, write),
  recording a ``counter_events`` row with its run id;
* ``deposit``: commits its write, "crashes" before it is marked done (status
  ``failed``), and is retried; the retry writes the counter again while the
  event insert is idempotent -- a double apply.

The workers also write their own ground truth to a JSON file: each run's id,
key, delta and the exact start/finish they logged. The test computes overlaps
from these files, never from drift.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()
Stamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("k", sa.String(16), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)
counter_events = sa.Table(
    "counter_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("k", sa.String(16), nullable=False),
    sa.Column("delta", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer),
    sa.Column("idempotency_key", sa.String(64), unique=True),
)
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(32), nullable=False),
    sa.Column("k", sa.String(16)),
    sa.Column("worker", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", Stamp, nullable=False),
    sa.Column("finished_at", Stamp),
)

STREAM_SPEC = """
version = 1

[streams.counter_events]
table = "counter_events"
key = ["k"]
order_by = ["id"]
run_id = "run_id"

[entities.counters]
table = "counters"
key = ["k"]

[entities.counters.columns.n]
stream = "counter_events"
fold = "sum"
value = "delta"
"""

SPEC = (
    STREAM_SPEC
    + """
[job_logs.runs]
table = "job_runs"
entity = "counters"
key = ["k"]
name = "job"
worker = "worker"
attempt = "attempt"
status = "status"
started_at = "started_at"
finished_at = "finished_at"
"""
)


def now() -> dt.datetime:
    """UTC now, naive, microseconds: exactly what the DATETIME(6)/timestamp columns keep."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _start(
    conn: sa.Connection, job: str, key: str, worker: str, attempt: int
) -> tuple[int, dt.datetime]:
    started = now()
    with conn.begin():
        run_id = conn.execute(
            job_runs.insert().values(
                job=job, k=key, worker=worker, attempt=attempt, status="running", started_at=started
            )
        ).inserted_primary_key[0]
    return int(run_id), started


def _finish(conn: sa.Connection, run_id: int, status: str) -> dt.datetime:
    finished = now()
    with conn.begin():
        conn.execute(
            job_runs.update()
            .where(job_runs.c.id == run_id)
            .values(status=status, finished_at=finished)
        )
    return finished


def bump(conn: sa.Connection, worker: str, key: str, delta: int, pause: float) -> dict:
    run_id, started = _start(conn, "bump", key, worker, 1)
    with conn.begin():
        n = conn.execute(sa.select(counters.c.n).where(counters.c.k == key)).scalar_one()
        time.sleep(pause)  # the race window: another worker reads the same n
        conn.execute(counters.update().where(counters.c.k == key).values(n=n + delta))
        conn.execute(counter_events.insert().values(k=key, delta=delta, run_id=run_id))
    finished = _finish(conn, run_id, "succeeded")
    return {"id": run_id, "job": "bump", "key": key, "delta": delta, "read": n}, started, finished


def deposit(conn: sa.Connection, worker: str, key: str, delta: int, attempt: int, crash: bool):
    run_id, started = _start(conn, "deposit", key, worker, attempt)
    idem = f"deposit-{key}"
    with conn.begin():
        conn.execute(counters.update().where(counters.c.k == key).values(n=counters.c.n + delta))
        seen = conn.execute(
            sa.select(counter_events.c.id).where(counter_events.c.idempotency_key == idem)
        ).first()
        if seen is None:
            conn.execute(
                counter_events.insert().values(
                    k=key, delta=delta, run_id=run_id, idempotency_key=idem
                )
            )
    finished = _finish(conn, run_id, "failed" if crash else "succeeded")
    run = {"id": run_id, "job": "deposit", "key": key, "delta": delta, "attempt": attempt}
    return run, started, finished


def work(url: str, worker: str, jobs: list, barrier, out: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    """A worker process: wait for the others, run its jobs, write its truth file."""
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    truth = []
    try:
        with engine.connect() as conn:
            barrier.wait(timeout=60)
            for job in jobs:
                if job[0] == "bump":
                    _, key, delta = job
                    run, started, finished = bump(conn, worker, key, delta, rng.uniform(0.01, 0.04))
                    truth.append(
                        run | {"start": started.isoformat(), "finish": finished.isoformat()}
                    )
                else:
                    _, key, delta = job
                    for attempt, crash in ((1, True), (2, False)):
                        run, started, finished = deposit(conn, worker, key, delta, attempt, crash)
                        truth.append(
                            run | {"start": started.isoformat(), "finish": finished.isoformat()}
                        )
                time.sleep(rng.uniform(0, 0.01))
    finally:
        engine.dispose()
    Path(out).write_text(json.dumps(truth))
