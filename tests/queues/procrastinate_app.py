"""A real procrastinate app whose tasks race, for tests/test_presets.py.

Imported by worker processes (spawn): the connection comes from the
environment variable DRIFT_PROCRASTINATE_CONNINFO, the shop's tables are the
ones in tests/race_workers.py (``counters``, ``counter_events``). Each task
writes its job id into ``counter_events.run_id``, so drift can tell each run's
effect; each ``bump`` also records the interval its code ran (ground truth).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import procrastinate
import psycopg

CONNINFO = os.environ.get("DRIFT_PROCRASTINATE_CONNINFO", "")
TRUTH = os.environ.get("DRIFT_PROCRASTINATE_TRUTH", "")

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=CONNINFO))


def _record(entry: dict) -> None:
    with Path(TRUTH).open("a") as f:
        f.write(json.dumps(entry) + "\n")


@app.task(name="bump", queue="drift", pass_context=True)
def bump(context: procrastinate.JobContext, key: str, delta: int) -> None:
    """A racy read-modify-write, like a careless job."""
    started = time.time()
    with psycopg.connect(CONNINFO, autocommit=False) as conn:
        n = conn.execute("SELECT n FROM counters WHERE k = %s", (key,)).fetchone()[0]
        time.sleep(0.05)
        conn.execute("UPDATE counters SET n = %s WHERE k = %s", (n + delta, key))
        conn.execute(
            "INSERT INTO counter_events (k, delta, run_id) VALUES (%s, %s, %s)",
            (key, delta, context.job.id),
        )
    _record(
        {"id": context.job.id, "key": key, "delta": delta, "start": started, "finish": time.time()}
    )


@app.task(
    name="receive",
    queue="drift",
    pass_context=True,
    retry=procrastinate.RetryStrategy(max_attempts=1, wait=0),
)
def receive(context: procrastinate.JobContext, key: str, delta: int) -> None:
    """Commits its write, then fails; the retry applies it again (the event is idempotent)."""
    with psycopg.connect(CONNINFO, autocommit=False) as conn:
        conn.execute("UPDATE counters SET n = n + %s WHERE k = %s", (delta, key))
        conn.execute(
            "INSERT INTO counter_events (k, delta, run_id, idempotency_key) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            (key, delta, context.job.id, f"receive-{key}"),
        )
    if context.job.attempts == 0:
        raise RuntimeError("worker lost its connection before marking the job done")


def run_worker(name: str, ready: Any = None) -> None:
    """A worker process: run jobs until the queue is empty.

    ``ready`` (a multiprocessing barrier) holds every worker until all have started:
    a worker that started first on a busy machine could otherwise drain the queue alone,
    and nothing would race.
    """
    if ready is not None:
        ready.wait(timeout=120)
    app.run_worker(queues=["drift"], wait=False, concurrency=1, name=name, listen_notify=False)
