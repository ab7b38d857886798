"""Outbox checks: every stream row announced exactly once, and promptly.

Each check is one set-based query that returns only the bad rows:

* ``unannounced_event`` -- a stream row that no outbox message announces (anti-join);
* ``duplicate_announcement`` -- a stream row announced by more than one message
  (GROUP BY ... HAVING);
* ``orphan_message`` -- a message announcing a stream row that does not exist
  (anti-join);
* ``stuck_message`` -- a message unpublished for longer than ``stuck_after``,
  measured against the snapshot time. The database returns only unpublished
  messages; their age is decided in Python because ``created_at`` may be text.

An outbox's ``where`` restricts the messages that count (e.g. one event type).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from audit.attribution import fetch_runs_by_id, instant
from audit.findings import (
    ABSENT,
    DUPLICATE_ANNOUNCEMENT,
    ORPHAN_MESSAGE,
    STUCK_MESSAGE,
    UNANNOUNCED_EVENT,
    Finding,
    iso,
)
from audit.schema import BoundJobLog, BoundOutbox, BoundSpec, BoundStream

DEFAULT_STUCK_AFTER = dt.timedelta(minutes=5)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` or plain seconds; ValueError otherwise."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 5m, 2h, 1d)") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a duration >= 0")
    return dt.timedelta(seconds=value * _UNITS[unit])


def check_outboxes(
    conn: Connection,
    bound: BoundSpec,
    snapshot_at: Any,
    stuck_after: dt.timedelta = DEFAULT_STUCK_AFTER,
) -> Iterator[Finding]:
    """Every outbox finding of the spec, outbox by outbox."""
    for outbox in bound.outboxes.values():
        stream = bound.streams[outbox.spec.stream]
        job_logs = [j for j in bound.job_logs.values() if j.spec.entity == outbox.spec.entity]
        yield from _with_writers(conn, job_logs, unannounced_events(conn, outbox, stream))
        yield from duplicate_announcements(conn, outbox, stream)
        yield from orphan_messages(conn, outbox, stream)
        if outbox.published_at is not None:
            yield from stuck_messages(conn, outbox, snapshot_at, stuck_after)


def _with_writers(
    conn: Connection, job_logs: list[BoundJobLog], findings: Iterator[Finding], batch: int = 500
) -> Iterator[Finding]:
    """Name the job run that wrote each unannounced row (when the stream says)."""
    if not job_logs:
        yield from findings
        return
    pending: list[Finding] = []

    def flush() -> Iterator[Finding]:
        runs = fetch_runs_by_id(conn, job_logs, (f.extra.get("run_id") for f in pending))
        for finding in pending:
            run = runs.get(str(finding.extra.get("run_id")))
            if run is None:
                yield finding
                continue
            yield replace(
                finding,
                evidence={
                    "overlapping_runs": [],
                    "retried_runs": [],
                    "first_divergence_at": iso(instant(finding.last_event_at)),
                    "runs": [run.as_json()],
                    "outbox": [],
                    "confidence": "high",
                    "why": f"{run.job} #{run.id} wrote this row without an outbox message",
                    "jobs": [run.job],
                },
            )
        pending.clear()

    for finding in findings:
        pending.append(finding)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()


def _announces(outbox: BoundOutbox, stream: BoundStream) -> ColumnElement:
    """message announces stream row (JSON references compare as text)."""
    order = stream.order_by[0]
    if outbox.announces_is_json:
        return outbox.announces == sa.cast(order, sa.String)
    return outbox.announces == order


def _messages(outbox: BoundOutbox) -> ColumnElement:
    return outbox.where if outbox.where is not None else sa.true()


def unannounced_events(
    conn: Connection, outbox: BoundOutbox, stream: BoundStream
) -> Iterator[Finding]:
    announced: sa.Select[Any] = (
        sa.select(sa.literal_column("1"))
        .select_from(outbox.table)
        .where(_announces(outbox, stream), _messages(outbox))
    )
    null = sa.null()
    query = (
        sa.select(
            *(k.label(f"k{i}") for i, k in enumerate(stream.key)),
            stream.order_by[0].label("event"),
            (stream.time if stream.time is not None else null).label("at"),
            (stream.run_id if stream.run_id is not None else null).label("run_id"),
        )
        .select_from(stream.table)
        .where(~sa.exists(announced))
        .order_by(*stream.key, stream.order_by[0])
    )
    n = len(stream.key)
    for row in conn.execute(query, execution_options={"yield_per": 2000}):
        m = row._mapping
        yield Finding(
            entity=outbox.spec.entity,
            key=tuple(row[:n]),
            kind=UNANNOUNCED_EVENT,
            actual={"stream": stream.spec.name, "event": m["event"], "at": m["at"]},
            last_event_at=m["at"],
            extra=_extra(outbox, event=m["event"], run_id=m["run_id"]),
        )


def duplicate_announcements(
    conn: Connection, outbox: BoundOutbox, stream: BoundStream
) -> Iterator[Finding]:
    # Group a subquery's column: a JSON path compiled twice would bind twice, and
    # PostgreSQL would not see the GROUP BY expression as the selected one.
    msgs = (
        sa.select(outbox.announces.label("announces"), outbox.id.label("id"))
        .select_from(outbox.table)
        .where(_messages(outbox))
        .subquery("msgs")
    )
    dup = (
        sa.select(
            msgs.c.announces,
            sa.func.count().label("n"),
            sa.func.min(msgs.c.id).label("first_id"),
            sa.func.max(msgs.c.id).label("last_id"),
        )
        .group_by(msgs.c.announces)
        .having(sa.func.count() > 1)
        .subquery("dup")
    )
    order = stream.order_by[0]
    on = dup.c.announces == (sa.cast(order, sa.String) if outbox.announces_is_json else order)
    query = (
        sa.select(
            *(k.label(f"k{i}") for i, k in enumerate(stream.key)),
            order.label("event"),
            dup.c.n,
            dup.c.first_id,
            dup.c.last_id,
            (stream.time if stream.time is not None else sa.null()).label("at"),
        )
        .select_from(dup.join(stream.table, on))
        .order_by(*stream.key, order)
    )
    n = len(stream.key)
    for row in conn.execute(query):
        m = row._mapping
        yield Finding(
            entity=outbox.spec.entity,
            key=tuple(row[:n]),
            kind=DUPLICATE_ANNOUNCEMENT,
            expected={"messages": 1},
            actual={"messages": m["n"], "first_id": m["first_id"], "last_id": m["last_id"]},
            last_event_at=m["at"],
            extra=_extra(outbox, event=m["event"], messages=m["n"]),
        )


def orphan_messages(
    conn: Connection, outbox: BoundOutbox, stream: BoundStream
) -> Iterator[Finding]:
    exists: sa.Select[Any] = (
        sa.select(sa.literal_column("1"))
        .select_from(stream.table)
        .where(_announces(outbox, stream))
    )
    query = (
        sa.select(
            *(k.label(f"k{i}") for i, k in enumerate(outbox.key)),
            outbox.id.label("id"),
            outbox.announces.label("announces"),
            outbox.created_at.label("created_at"),
        )
        .select_from(outbox.table)
        .where(~sa.exists(exists), _messages(outbox))
        .order_by(outbox.id)
    )
    n = len(outbox.key)
    for row in conn.execute(query, execution_options={"yield_per": 2000}):
        m = row._mapping
        yield Finding(
            entity=outbox.spec.entity,
            key=tuple(row[:n]),
            kind=ORPHAN_MESSAGE,
            expected=ABSENT,
            actual={"message": m["id"], "announces": m["announces"]},
            last_event_at=m["created_at"],
            extra=_extra(outbox, message=m["id"], announces=m["announces"]),
        )


def stuck_messages(
    conn: Connection, outbox: BoundOutbox, snapshot_at: Any, stuck_after: dt.timedelta
) -> Iterator[Finding]:
    now = instant(snapshot_at)
    if now is None or outbox.published_at is None:
        return
    try:
        cutoff = now - stuck_after
    except OverflowError:  # a threshold older than the calendar: nothing is stuck
        return
    query = (
        sa.select(
            *(k.label(f"k{i}") for i, k in enumerate(outbox.key)),
            outbox.id.label("id"),
            outbox.announces.label("announces"),
            outbox.created_at.label("created_at"),
        )
        .select_from(outbox.table)
        .where(outbox.published_at.is_(None), _messages(outbox))
        .order_by(outbox.created_at, outbox.id)
    )
    n = len(outbox.key)
    for row in conn.execute(query, execution_options={"yield_per": 2000}):
        m = row._mapping
        created = instant(m["created_at"])
        if created is None or created >= cutoff:
            continue
        age = (now - created).total_seconds()
        yield Finding(
            entity=outbox.spec.entity,
            key=tuple(row[:n]),
            kind=STUCK_MESSAGE,
            actual={"message": m["id"], "created_at": m["created_at"], "age_seconds": age},
            last_event_at=m["created_at"],
            extra=_extra(
                outbox,
                message=m["id"],
                announces=m["announces"],
                age_seconds=age,
                snapshot_at=iso(now),
            ),
        )


def _extra(outbox: BoundOutbox, **values: Any) -> dict[str, Any]:
    return {"outbox": outbox.spec.name, **values}
