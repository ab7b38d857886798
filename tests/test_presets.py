"""Job-queue presets against the real libraries' own schemas and workers.

* procrastinate: schema from its own installer (``schema_manager.apply_schema``),
  jobs run by real worker processes (``App.run_worker``) that race.
* Oban (Python): its package needs Python >= 3.12 and this project runs on 3.11,
  so its workers cannot run here. The schema is the package's own
  ``install.sql`` (vendored from oban 0.7.0 under tests/queues/oban/, Apache-2.0),
  and jobs move through the package's own SQL (insert_job, fetch_jobs, ack_job).
* Celery: tables created by Celery's SQLAlchemy result backend itself
  (``result_extended=True``), tasks run by a real ``celery worker`` process with
  Redis (127.0.0.1:6379) as the broker.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from audit import parse_spec, run_audit
from tests import race_workers as rw
from tests.conftest import make_backend

pytestmark = [pytest.mark.server, pytest.mark.slow]

HERE = Path(__file__).parent / "queues"

STREAM = rw.STREAM_SPEC


@pytest.fixture
def pg(tmp_path):
    backends = make_backend("postgresql", tmp_path)
    backend = next(backends)
    yield backend
    backends.close()


def _conninfo(backend) -> str:
    url = make_url(backend.url)
    parts = [
        f"host={url.host or '127.0.0.1'}",
        f"port={url.port or 5432}",
        f"user={url.username or 'postgres'}",
        f"dbname={url.database or 'test'}",
        f"options=-csearch_path={backend.schema}",
    ]
    if url.password:
        parts.append(f"password={url.password}")
    return " ".join(parts)


def _shop(backend, keys):
    with backend.engine.begin() as conn:
        rw.metadata.create_all(conn, tables=[rw.counters, rw.counter_events])
        conn.execute(rw.counters.insert(), [{"k": k, "n": 0} for k in keys])


def _audit(backend, tmp_path, job_log: str, stream: str = STREAM):
    spec = parse_spec(stream + job_log + f'\n[database]\nurl = "{backend.url}"\n')
    result = run_audit(spec, out=tmp_path / "audit")
    rows = pq.read_table(result.findings_path).to_pylist()
    return result, {json.loads(r["key"])[0]: r for r in rows}


def _final(backend) -> dict[str, int]:
    with backend.engine.connect() as conn:
        return dict(conn.execute(sa.select(rw.counters.c.k, rw.counters.c.n)).all())


# --------------------------------------------------------------------------- procrastinate


def test_procrastinate_preset_with_real_workers(pg, tmp_path, monkeypatch):
    racy, retried = ["P0", "P1"], "P9"
    _shop(pg, [*racy, retried])
    truth_file = tmp_path / "truth.jsonl"
    monkeypatch.setenv("DRIFT_PROCRASTINATE_CONNINFO", _conninfo(pg))
    monkeypatch.setenv("DRIFT_PROCRASTINATE_TRUTH", str(truth_file))
    from tests.queues import procrastinate_app

    app_module = importlib.reload(procrastinate_app)
    with app_module.app.open():
        app_module.app.schema_manager.apply_schema()  # procrastinate's own installer
        for bit in range(4):
            for key in racy:
                app_module.bump.defer(key=key, delta=1 << bit)
        app_module.receive.defer(key=retried, delta=1000)

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(3)
    workers = [ctx.Process(target=app_module.run_worker, args=(f"w{i}", ready)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0

    result, found = _audit(
        pg,
        tmp_path,
        """
[job_logs.queue]
preset = "procrastinate"
entity = "counters"
key = [{ json = "args", path = "key" }]
""",
    )
    final = _final(pg)
    truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
    raced = 0
    for key in racy:
        runs = [r for r in truth if r["key"] == key]
        lost = {r["id"] for r in runs if not final[key] & r["delta"]}
        if not lost:
            assert key not in found
            continue
        raced += 1
        evidence = json.loads(found[key]["evidence"])
        assert found[key]["cause"] == "lost_update", evidence["why"]
        assert set(evidence["lost_runs"]) == lost
        pairs = {tuple(sorted(p)) for p in evidence["overlapping_runs"]}
        # the task code ran inside the run's event interval: every pair whose code
        # overlapped is a pair drift reports
        for a in runs:
            for b in runs:
                if a["id"] < b["id"] and a["start"] < b["finish"] and b["start"] < a["finish"]:
                    assert (a["id"], b["id"]) in pairs
        assert {r["job"] for r in evidence["runs"]} == {"bump"}
    assert raced, "the procrastinate workers never raced"

    assert final[retried] == 2000
    evidence = json.loads(found[retried]["evidence"])
    assert found[retried]["cause"] == "double_apply", evidence["why"]
    attempts = evidence["runs"]
    assert [(r["attempt"], r["status"]) for r in attempts] == [
        (1, "deferred_for_retry"),
        (2, "succeeded"),
    ]
    assert attempts[0]["id"] == attempts[1]["id"]  # one job, two attempts
    assert evidence["retries"] == [[attempts[0]["id"], attempts[1]["id"]]]
    assert result.summary["attribution"]["job_logs"]["queue"]["preset"] == "procrastinate"


# --------------------------------------------------------------------------- Oban


def _oban_sql(name: str, schema: str) -> str:
    """An Oban query as the package loads it (Query._load_file applies the prefix)."""
    sql = (HERE / "oban" / name).read_text()
    return re.sub(
        r"\b(oban_insert|oban_job_state|oban_jobs|oban_leaders|oban_producers|oban_state_to_bit)\b",
        rf"{schema}.\1",
        sql,
    )


def test_oban_preset_against_obans_own_schema_and_queries(pg, tmp_path):
    import psycopg
    from psycopg.types.json import Jsonb

    _shop(pg, ["O1", "O2", "O3"])
    with psycopg.connect(_conninfo(pg), autocommit=True) as conn:
        conn.execute(_oban_sql("install.sql", pg.schema))

        def insert(key, delta, worker="app.Bump", max_attempts=3):
            row = conn.execute(
                _oban_sql("insert_job.sql", pg.schema),
                {
                    "args": Jsonb({"key": key, "delta": delta}),
                    "inserted_at": None,
                    "max_attempts": max_attempts,
                    "meta": Jsonb({}),
                    "priority": 0,
                    "queue": "default",
                    "scheduled_at": None,
                    "state": "available",
                    "tags": [],
                    "worker": worker,
                },
            ).fetchone()
            return row[0]

        def fetch(node):
            return conn.execute(
                _oban_sql("fetch_jobs.sql", pg.schema),
                {"queue": "default", "demand": 1, "attempted_by": [node, str(uuid.uuid4())]},
            ).fetchall()

        def ack(job, state, error=None, attempt_change=None):
            conn.execute(
                _oban_sql("ack_job.sql", pg.schema),
                {
                    "id": job[0],
                    "state": state,
                    "attempted_at": job[13],
                    "schedule_in": 0 if state == "retryable" else None,
                    "attempt_change": attempt_change,
                    "error": Jsonb([error]) if error else None,
                    "meta": None,
                },
            )

        def work(job, delta_seen):
            key, delta = job[7]["key"], job[7]["delta"]
            conn.execute("UPDATE counters SET n = %s WHERE k = %s", (delta_seen + delta, key))
            conn.execute(
                "INSERT INTO counter_events (k, delta, run_id) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (key, delta, job[0]),
            )

        # O1: two jobs executing at once (two nodes fetched before either acked); both
        # read n = 0 and write back: the first job's +1 is lost.
        insert("O1", 1)
        insert("O1", 2)
        first, second = fetch("node-a")[0], fetch("node-b")[0]
        time.sleep(0.01)
        work(first, 0)
        ack(first, "completed")
        work(second, 0)
        ack(second, "completed")
        # O2: a job that wrote, then failed and was retried: attempt 2 wrote again.
        insert("O2", 500)
        job = fetch("node-a")[0]
        work(job, 0)
        ack(job, "retryable", {"at": "2026-01-01T00:00:00", "attempt": 1, "error": "lost"})
        conn.execute(
            f"UPDATE \"{pg.schema}\".oban_jobs SET state = 'available' WHERE id = %s", (job[0],)
        )
        retry = fetch("node-b")[0]
        assert retry[4] == 2  # the library's own fetch counted the attempt
        conn.execute("UPDATE counters SET n = n + 500 WHERE k = 'O2'")
        ack(retry, "completed")
        # O3: clean.
        insert("O3", 7)
        job = fetch("node-a")[0]
        work(job, 0)
        ack(job, "completed")

    result, found = _audit(
        pg,
        tmp_path,
        """
[job_logs.oban]
preset = "oban"
entity = "counters"
key = [{ json = "args", path = "key" }]
""",
    )
    assert set(found) == {"O1", "O2"}
    lost = json.loads(found["O1"]["evidence"])
    assert found["O1"]["cause"] == "lost_update", lost["why"]
    assert lost["overlapping_runs"] == [[first[0], second[0]]]
    assert lost["lost_runs"] == [first[0]]
    assert {r["worker"] for r in lost["runs"]} == {"node-a", "node-b"}
    assert {r["job"] for r in lost["runs"]} == {"app.Bump"}
    double = json.loads(found["O2"]["evidence"])
    assert found["O2"]["cause"] == "double_apply", double["why"]
    assert double["retries"] == [[None, retry[0]]]  # Oban keeps the last attempt only
    assert double["runs"][0]["attempt"] == 2 and double["runs"][0]["status"] == "completed"


# --------------------------------------------------------------------------- Celery


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def test_celery_preset_with_a_real_worker(pg, tmp_path):
    if not _redis_up():
        if os.environ.get("DRIFT_REQUIRE_SERVERS") == "1":
            pytest.fail("DRIFT_REQUIRE_SERVERS=1 but Redis at 127.0.0.1:6379 does not answer")
        pytest.skip("Redis at 127.0.0.1:6379 does not answer")
    with pg.engine.begin() as conn:
        rw.metadata.create_all(conn, tables=[rw.counters])
        conn.execute(rw.counters.insert(), [{"k": "C1", "n": 0}, {"k": "C2", "n": 0}])
        conn.execute(
            sa.text(
                "CREATE TABLE celery_events (id SERIAL PRIMARY KEY, k TEXT NOT NULL, "
                "delta INTEGER NOT NULL, run_id TEXT, idempotency_key TEXT UNIQUE)"
            )
        )
    queue = f"drift-{uuid.uuid4().hex[:8]}"
    url = make_url(pg.url).set(drivername="postgresql+psycopg")
    env = dict(os.environ)
    env |= {
        "DRIFT_CELERY_BACKEND": "db+" + url.render_as_string(hide_password=False),
        "DRIFT_CELERY_QUEUE": queue,
        "DRIFT_CELERY_DB": pg.url,
    }
    celery = shutil.which("celery", path=str(Path(sys.executable).parent))
    assert celery, "celery is not installed in this environment"
    worker = subprocess.Popen(
        [
            celery,
            "-A",
            "tests.queues.celery_app",
            "worker",
            "-Q",
            queue,
            "--pool=solo",
            "--concurrency=1",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{queue}@drift",
        ],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = subprocess.run(
            [sys.executable, "-m", "tests.queues.celery_app", "send"],
            cwd=Path(__file__).parent.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    sent = json.loads(client.stdout)

    result, found = _audit(
        pg,
        tmp_path,
        """
[job_logs.celery]
preset = "celery"
entity = "counters"
key = [{ json = "args", path = "0" }]
""",
        STREAM.replace('table = "counter_events"', 'table = "celery_events"'),
    )
    assert _final(pg) == {"C1": 2 * 40, "C2": 5}
    assert set(found) == {"C1"}
    evidence = json.loads(found["C1"]["evidence"])
    assert found["C1"]["cause"] == "double_apply", evidence["why"]
    (run,) = evidence["runs"]
    assert run["id"] == sent["C1"] and run["attempt"] == 2 and run["status"] == "SUCCESS"
    assert run["job"] == "drift.receive" and run["worker"] == f"{queue}@drift"
    assert run["started_at"] == run["finished_at"]  # no start time in the backend
    assert evidence["retries"] == [[None, sent["C1"]]]
