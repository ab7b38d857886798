"""A real Celery app for tests/test_presets.py: Redis broker, SQLAlchemy result backend.

Configured from the environment (DRIFT_CELERY_BACKEND, DRIFT_CELERY_QUEUE,
DRIFT_CELERY_DB). ``python -m tests.queues.celery_app send`` sends the tasks,
waits for them and prints their task ids as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import sqlalchemy as sa
from celery import Celery

QUEUE = os.environ.get("DRIFT_CELERY_QUEUE", "drift")

app = Celery(
    "drift",
    broker="redis://127.0.0.1:6379/15",
    backend=os.environ.get("DRIFT_CELERY_BACKEND", ""),
)
app.conf.update(
    result_extended=True,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

_engine = None


def engine() -> sa.Engine:
    global _engine
    if _engine is None:
        _engine = sa.create_engine(os.environ["DRIFT_CELERY_DB"])
    return _engine


def _apply(key: str, delta: int, run_id: str, idempotency_key: str | None) -> None:
    with engine().begin() as conn:
        conn.execute(sa.text("UPDATE counters SET n = n + :d WHERE k = :k"), {"d": delta, "k": key})
        conn.execute(
            sa.text(
                "INSERT INTO celery_events (k, delta, run_id, idempotency_key) "
                "VALUES (:k, :d, :r, :i) ON CONFLICT (idempotency_key) DO NOTHING"
            ),
            {"k": key, "d": delta, "r": run_id, "i": idempotency_key},
        )


@app.task(name="drift.receive", bind=True, max_retries=1, default_retry_delay=0)
def receive(self, key: str, delta: int) -> None:  # type: ignore[no-untyped-def]
    """Commits, then asks to be retried; the retry applies the counter again."""
    _apply(key, delta, self.request.id, f"receive-{key}")
    if self.request.retries == 0:
        raise self.retry(countdown=0)


@app.task(name="drift.add", bind=True)
def add(self, key: str, delta: int) -> None:  # type: ignore[no-untyped-def]
    _apply(key, delta, self.request.id, None)


if __name__ == "__main__" and sys.argv[1:] == ["send"]:
    first = receive.delay("C1", 40)
    second = add.delay("C2", 5)
    first.get(timeout=60)
    second.get(timeout=60)
    print(json.dumps({"C1": first.id, "C2": second.id}))
