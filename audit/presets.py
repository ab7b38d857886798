"""Job-queue presets: the tables of common Python job queues, read as a job log.

``[job_logs.x] preset = "procrastinate"`` (or ``"oban"``, ``"celery"``) says
where runs, their jobs, attempts, workers and times are in that library's own
schema; the spec still says which entity the jobs touch and where the key is
(usually inside the job's JSON arguments: ``key = [{ json = "args", path = "sku" }]``).

Each preset is a SQLAlchemy Core query over the library's tables that yields
one row per run with the columns ``id``, ``job``, ``worker``, ``attempt``,
``status``, ``started_at``, ``finished_at`` and the job's arguments (``args``).
What each library's tables cannot tell is listed in :data:`Preset.blind_spots`
and in docs/attribution.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Reflect = Callable[[str, str, str | None], sa.Table]
Source = tuple[sa.FromClause, dict[str, str | None]]

_COLUMNS = {
    "id": "id",
    "job": "job",
    "worker": "worker",
    "attempt": "attempt",
    "status": "status",
    "started_at": "started_at",
    "finished_at": "finished_at",
}


@dataclass(frozen=True)
class Preset:
    """A job queue's schema, as a job log."""

    name: str
    tables: tuple[str, ...]
    failed: tuple[str, ...]  # statuses of a run that ended in failure (retries follow)
    blind_spots: tuple[str, ...]
    build: Callable[[Connection, Any, Reflect], Source]


def _procrastinate(conn: Connection, job_log: Any, reflect: Reflect) -> Source:
    """One run per attempt: each ``started`` event to the event that ended it."""
    at = f"{job_log.section}.preset"
    jobs = reflect(at, "procrastinate_jobs", job_log.schema)
    events = reflect(at, "procrastinate_events", job_log.schema)
    ends = ("deferred_for_retry", "failed", "succeeded", "aborted", "cancelled")
    event_type = sa.cast(events.c.type, sa.String)
    window: dict[str, Any] = {
        "partition_by": events.c.job_id,
        "order_by": (events.c.at, events.c.id),
    }
    ev = (
        sa.select(
            events.c.job_id,
            events.c.id,
            event_type.label("type"),
            events.c.at,
            sa.func.lead(event_type).over(**window).label("next_type"),
            sa.func.lead(events.c.at).over(**window).label("next_at"),
        )
        .where(event_type.in_(("started", *ends)))
        .subquery("ev")
    )
    runs = (
        sa.select(
            jobs.c.id.label("id"),
            jobs.c.task_name.label("job"),
            jobs.c.worker_id.label("worker"),
            sa.func.row_number()
            .over(partition_by=ev.c.job_id, order_by=(ev.c.at, ev.c.id))
            .label("attempt"),
            sa.func.coalesce(ev.c.next_type, sa.cast(jobs.c.status, sa.String)).label("status"),
            ev.c.at.label("started_at"),
            ev.c.next_at.label("finished_at"),
            jobs.c.args,
            jobs.c.queue_name,
            jobs.c.lock,
            jobs.c.queueing_lock,
        )
        .select_from(ev.join(jobs, jobs.c.id == ev.c.job_id))
        .where(ev.c.type == "started")
        .subquery("procrastinate_runs")
    )
    return runs, dict(_COLUMNS)


def _oban(conn: Connection, job_log: Any, reflect: Reflect) -> Source:
    """One run per job row: its latest attempt."""
    jobs = reflect(f"{job_log.section}.preset", "oban_jobs", job_log.schema)
    state = sa.cast(jobs.c.state, sa.String)
    runs = (
        sa.select(
            jobs.c.id.label("id"),
            jobs.c.worker.label("job"),
            jobs.c.attempted_by[1].label("worker"),  # node of the last attempt
            jobs.c.attempt.label("attempt"),
            state.label("status"),
            jobs.c.attempted_at.label("started_at"),
            sa.func.coalesce(
                jobs.c.completed_at,
                jobs.c.discarded_at,
                jobs.c.cancelled_at,
                # a retryable job's attempt ended at its last error
                sa.case(
                    (state == "retryable", sa.cast(jobs.c.errors[-1]["at"].astext, sa.DateTime))
                ),
            ).label("finished_at"),
            jobs.c.args,
            jobs.c.meta,
            jobs.c.queue,
        )
        .where(jobs.c.attempted_at.is_not(None))
        .subquery("oban_runs")
    )
    return runs, dict(_COLUMNS)


def _celery(conn: Connection, job_log: Any, reflect: Reflect) -> Source:
    """One run per task id, as the SQLAlchemy result backend last stored it."""
    from audit.dialects import get_dialect

    meta = reflect(f"{job_log.section}.preset", "celery_taskmeta", job_log.schema)
    for needed in ("name", "args", "worker", "retries"):
        if needed not in meta.c:
            from audit.errors import SpecError

            raise SpecError(
                f"{job_log.section}.preset: celery_taskmeta has no {needed!r} column; "
                "enable result_extended = True in the Celery app"
            )
    text = get_dialect(conn.dialect.name).bytes_text
    runs = (
        sa.select(
            meta.c.task_id.label("id"),
            meta.c.name.label("job"),
            meta.c.worker.label("worker"),
            (sa.func.coalesce(meta.c.retries, 0) + 1).label("attempt"),
            meta.c.status.label("status"),
            # The backend keeps no start time: a run is the instant it was stored.
            meta.c.date_done.label("started_at"),
            meta.c.date_done.label("finished_at"),
            text(meta.c.args).label("args"),
            text(meta.c.kwargs).label("kwargs"),
            meta.c.queue,
        )
        .where(meta.c.name.is_not(None))
        .subquery("celery_runs")
    )
    return runs, dict(_COLUMNS)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="procrastinate",
            tables=("procrastinate_jobs", "procrastinate_events"),
            failed=("deferred_for_retry", "failed", "aborted"),
            blind_spots=(
                "jobs deleted by the application (or by delete_old_jobs) are gone with "
                "their events (ON DELETE CASCADE)",
                "the worker is the job's current worker_id: the same for every attempt, "
                "and NULL once the worker row is pruned",
                "start and end times are event times, i.e. the start of the transaction "
                "that changed the status, not the moment the task's code ran",
                "jobs that never started (todo, cancelled) are no runs",
            ),
            build=_procrastinate,
        ),
        Preset(
            name="oban",
            tables=("oban_jobs",),
            failed=("retryable", "discarded"),
            blind_spots=(
                "the last attempt only: attempted_at is overwritten by each attempt, "
                "earlier attempts leave only an error entry",
                "a retried job keeps its id: a retry is seen as attempt > 1 with no "
                "earlier interval, so it never overlaps its own previous attempt",
                "jobs pruned by the pruner (completed, cancelled, discarded after max_age) "
                "are gone",
                "an executing job has no finish time (open-ended); a retryable one ends at "
                "its last error's time",
            ),
            build=_oban,
        ),
        Preset(
            name="celery",
            tables=("celery_taskmeta",),
            failed=("FAILURE", "RETRY", "REVOKED"),
            blind_spots=(
                "no start time: the result backend stores only date_done, so a run is "
                "an instant and race windows (overlaps) cannot be seen",
                "the last state only: a retry reuses the task id and overwrites the row "
                "(retries counts them)",
                "results expire (result_expires, default one day) and tasks with "
                "ignore_result store nothing",
                "needs result_extended = True for name, args, worker and retries; args "
                "are readable only with a JSON result serializer",
            ),
            build=_celery,
        ),
    )
}


def bind_preset(conn: Connection, job_log: Any, reflect: Reflect) -> Source:
    """The preset's run query and the names of its columns."""
    return PRESETS[job_log.preset].build(conn, job_log, reflect)
