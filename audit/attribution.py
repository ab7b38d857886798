"""Attribution: why a key drifted, from the job log's evidence.

For each finding of an entity that has a job log, drift reads (inside the
audit's snapshot, in batches of drifted keys) the job runs that touched the
key, the effect each run had on the audited column, and the key's outbox
messages, and classifies a cause. The rules (also in docs/attribution.md):

* **race windows**: two runs on the same key overlap when each started before
  the other finished (strict; a run with no ``finished_at`` is still open).
* **retries**: a run whose ``attempt`` is one more than the previous run of the
  same job on the key, or that follows a failed run of the same job on the key,
  or whose ``attempt`` is above 1 with no earlier run on the key.
* **effect of a run** on a sum/count column: the fold of the stream rows it
  wrote (``run_id`` on the stream). Without ``run_id``, the stream rows whose
  ``time`` lies within the run's interval (medium confidence at best).
* ``lost_update``: the drift ``actual - expected`` equals minus the summed
  effects of a smallest set of runs that each overlap another run.
* ``double_apply``: a retry exists and the drift equals the effect of one run of
  a retried job's attempts (the work that was applied again).
* ``stale_overwrite`` (first/last folds): the actual value equals the value of
  an earlier stream row of the key than the one that should have won.
* ``unexplained_write``: no job run touched the key, or runs did but none
  overlapped or was retried, and none explains the value.
* ``unknown``: job activity exists but the numbers match no rule.

Findings of entities without a job log keep ``cause = None``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from audit.collation import match_keys
from audit.dialects import Dialect
from audit.findings import MISMATCH, Finding, iso
from audit.rebuild import key_filter_clause
from audit.schema import (
    BoundColumn,
    BoundEntity,
    BoundJobLog,
    BoundOutbox,
    BoundSpec,
    BoundStream,
)

LOST_UPDATE = "lost_update"
DOUBLE_APPLY = "double_apply"
STALE_OVERWRITE = "stale_overwrite"
UNEXPLAINED_WRITE = "unexplained_write"
UNKNOWN = "unknown"
CAUSES = (LOST_UPDATE, DOUBLE_APPLY, STALE_OVERWRITE, UNEXPLAINED_WRITE, UNKNOWN)

BATCH_KEYS = 500
MAX_RUNS_SHOWN = 100
MAX_MESSAGES_SHOWN = 20
MAX_SUBSET_RUNS = 12  # subset search over overlapping runs' effects (2**12 sums at most)

Key = tuple[Any, ...]


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One job run as the job log recorded it."""

    id: Any
    job: str
    worker: Any
    attempt: int | None
    status: Any
    started_at: Any
    finished_at: Any
    start: dt.datetime | None
    finish: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "worker": self.worker,
            "attempt": self.attempt,
            "status": self.status,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


def instant(value: Any) -> dt.datetime | None:
    """A comparable UTC instant from a driver value (naive values are read as UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return None


def overlapping_pairs(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs whose [start, finish] intervals overlap (strictly).

    A run without a finish is open-ended; a run without a start overlaps nothing.
    Pairs are ordered by start, each pair (earlier, later).
    """
    timed = sorted((r for r in runs if r.start is not None), key=lambda r: (r.start, str(r.id)))
    pairs = []
    for i, a in enumerate(timed):
        for b in timed[i + 1 :]:
            assert a.start is not None and b.start is not None
            if a.finish is not None and b.start >= a.finish:
                # b starts after a ended; later runs start later still.
                break
            if b.finish is None or a.start < b.finish:
                pairs.append((a, b))
    return pairs


def retry_pairs(runs: Sequence[Run], failed: Iterable[str]) -> list[tuple[Run | None, Run]]:
    """(previous attempt, retry) for each run that is a retry (see the module docs)."""
    failed_set = {str(f).lower() for f in failed}
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=_run_order):
        by_job[run.job].append(run)
    pairs: list[tuple[Run | None, Run]] = []
    for job_runs in by_job.values():
        for i, run in enumerate(job_runs):
            prev = job_runs[i - 1] if i else None
            prev_failed = prev is not None and str(prev.status).lower() in failed_set
            next_attempt = (
                prev is not None
                and prev.attempt is not None
                and run.attempt is not None
                and run.attempt == prev.attempt + 1
            )
            if prev_failed or next_attempt:
                pairs.append((prev, run))
            elif run.attempt is not None and run.attempt > 1:
                pairs.append((None, run))
    return pairs


def _run_order(run: Run) -> tuple[Any, ...]:
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return (run.start or far, str(run.id))


# --------------------------------------------------------------------------- numbers


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Verdict:
    cause: str
    confidence: str
    why: str
    jobs: tuple[str, ...] = ()
    first_divergence_at: str | None = None
    detail: dict[str, Any] | None = None


def classify_numeric(
    drift: Decimal,
    runs: Sequence[Run],
    pairs: Sequence[tuple[Run, Run]],
    retries: Sequence[tuple[Run | None, Run]],
    effects: dict[str, Decimal] | None,
    effects_exact: bool,
    tolerance: Decimal = Decimal(0),
) -> Verdict:
    """The cause of a sum/count drift (``drift = actual - expected``).

    ``effects`` maps str(run id) to the run's effect on the column, or is None
    when the spec gives no way to know effects.
    """

    def equal(a: Decimal, b: Decimal) -> bool:
        return abs(a - b) <= tolerance

    level = "high" if effects_exact else "medium"
    lost = None
    if pairs and effects is not None:
        candidates: dict[str, Run] = {}
        for a, b in pairs:
            for r in (a, b):
                if effects.get(str(r.id), Decimal(0)) != 0:
                    candidates[str(r.id)] = r
        lost = _smallest_subset(list(candidates.values()), effects, -drift, equal)
    doubled = None
    if retries and effects is not None:
        for prev, retry in retries:
            for maybe in (prev, retry):
                if maybe is None:
                    continue
                r = maybe
                effect = effects.get(str(r.id), Decimal(0))
                if effect != 0 and equal(effect, drift):
                    doubled = (prev, retry, r, effect)
                    break
            if doubled:
                break
    if lost:
        lost_ids = {str(r.id) for r in lost}
        involved = [(a, b) for a, b in pairs if str(a.id) in lost_ids or str(b.id) in lost_ids]
        first = min(max(a.start, b.start) for a, b in involved if a.start and b.start)
        names = ", ".join(f"{r.job} #{r.id}" for r in lost)
        total = sum((effects[str(r.id)] for r in lost), Decimal(0))  # type: ignore[index]
        confidence = level if len(lost) == 1 and not doubled else "medium"
        why = (
            f"{names} overlapped another run on this key and its effect "
            f"({_fmt(total)}) is exactly what is missing"
            if len(lost) == 1
            else f"the drift equals the lost effects ({_fmt(total)}) of {len(lost)} "
            f"overlapping runs: {names}"
        )
        if doubled:
            why += "; a retry would also explain it"
        return Verdict(
            LOST_UPDATE,
            confidence,
            why,
            jobs=_jobs(r for pair in involved for r in pair),
            first_divergence_at=first.isoformat(),
            detail={"lost_runs": [r.id for r in lost]},
        )
    if doubled:
        prev, retry, applied, effect = doubled
        return Verdict(
            DOUBLE_APPLY,
            level,
            f"{retry.job} #{retry.id} (attempt {retry.attempt}) retried "
            + (f"#{prev.id} ({prev.status})" if prev else "an earlier attempt")
            + f"; the drift equals the effect applied again ({_fmt(effect)})",
            jobs=(retry.job,),
            first_divergence_at=retry.start.isoformat() if retry.start else None,
            detail={"retry": [prev.id if prev else None, retry.id]},
        )
    return _fallback(runs, pairs, retries, effects is not None, f"the drift ({_fmt(drift)})")


def classify_stale(
    actual: Any,
    history: Sequence[dict[str, Any]],
    fold: str,
    runs: Sequence[Run],
    pairs: Sequence[tuple[Run, Run]],
    retries: Sequence[tuple[Run | None, Run]],
) -> Verdict:
    """The cause of a first/last drift: is the actual value an older stream value?

    ``history`` holds the key's contributing stream rows in order
    (``order``, ``value``, ``time``, ``run_id``).
    """
    rows = list(history) if fold == "last" else list(reversed(history))
    if len(rows) >= 2:
        winner = rows[-1]
        for i in range(len(rows) - 2, -1, -1):
            row = rows[i]
            if row["value"] == actual and row["value"] != winner["value"]:
                newer = rows[i + 1]
                stale_run = _find_run(runs, row.get("run_id"))
                jobs = (
                    (stale_run.job,)
                    if stale_run
                    else _jobs(r for p in pairs for r in p)
                    if pairs
                    else ()
                )
                who = f" (written by {stale_run.job} #{stale_run.id})" if stale_run else ""
                return Verdict(
                    STALE_OVERWRITE,
                    "high" if pairs or stale_run else "medium",
                    f"the row holds {actual!r}, the value of an earlier row "
                    f"{_order_text(row)}{who}, over the newer {winner['value']!r} "
                    f"{_order_text(winner)}",
                    jobs=jobs,
                    first_divergence_at=_iso_instant(newer.get("time")),
                    detail={
                        "stale_row": _row_json(row),
                        "overwritten_row": _row_json(winner),
                    },
                )
    return _fallback(runs, pairs, retries, False, "the value")


def _fallback(
    runs: Sequence[Run],
    pairs: Sequence[tuple[Run, Run]],
    retries: Sequence[tuple[Run | None, Run]],
    effects_known: bool,
    what: str,
) -> Verdict:
    first = _earliest_overlap(pairs)
    if not runs:
        change = {
            "the row": "the row was written or removed out of band",
        }.get(what, "a manual or out-of-band change")
        return Verdict(
            UNEXPLAINED_WRITE,
            "medium",
            f"no job run touched this key: {change}",
            first_divergence_at=first,
        )
    if pairs and not effects_known:
        return Verdict(
            LOST_UPDATE,
            "low",
            f"{len(pairs)} pair(s) of runs overlapped on this key, but run effects are "
            "unknown (no run_id or time on the stream), so the loss is not proven",
            jobs=_jobs(r for p in pairs for r in p),
            first_divergence_at=first,
        )
    if retries and not effects_known:
        return Verdict(
            DOUBLE_APPLY,
            "low",
            f"{len(retries)} retried run(s) on this key, but run effects are unknown",
            jobs=_jobs(r for _, r in retries),
            first_divergence_at=first,
        )
    if pairs or retries:
        return Verdict(
            UNKNOWN,
            "low",
            f"{len(pairs)} overlapping pair(s) and {len(retries)} retried run(s) on this "
            f"key, but {what} matches no lost or repeated run effect",
            jobs=_jobs([*(r for p in pairs for r in p), *(r for _, r in retries)]),
            first_divergence_at=first,
        )
    return Verdict(
        UNEXPLAINED_WRITE,
        "medium",
        f"{len(runs)} run(s) touched this key, none overlapped or was retried, and "
        f"{what} is explained by none of them",
        first_divergence_at=first,
    )


def _smallest_subset(candidates, effects, target, equal):  # type: ignore[no-untyped-def]
    if not candidates:
        return None
    candidates = sorted(candidates, key=_run_order)[:MAX_SUBSET_RUNS]
    for size in range(1, len(candidates) + 1):
        for combo in itertools.combinations(candidates, size):
            if equal(sum((effects[str(r.id)] for r in combo), Decimal(0)), target):
                return list(combo)
    return None


def _iso_instant(value: Any) -> str | None:
    at = instant(value)
    return at.isoformat() if at is not None else iso(value)


def _earliest_overlap(pairs: Sequence[tuple[Run, Run]]) -> str | None:
    starts = [max(a.start, b.start) for a, b in pairs if a.start and b.start]
    return min(starts).isoformat() if starts else None


def _jobs(runs: Iterable[Run | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.job for r in runs if r is not None))


def _find_run(runs: Sequence[Run], run_id: Any) -> Run | None:
    if run_id is None:
        return None
    return next((r for r in runs if str(r.id) == str(run_id)), None)


def _fmt(value: Decimal) -> str:
    return f"{value:+f}".rstrip("0").rstrip(".") if "." in f"{value:f}" else f"{value:+f}"


def _order_text(row: dict[str, Any]) -> str:
    order = row["order"]
    text = ", ".join(str(v) for v in order)
    at = f" at {iso(row['time'])}" if row.get("time") is not None else ""
    return f"({text}{at})"


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "order": list(row["order"]),
        "value": row["value"],
        "time": iso(row.get("time")),
        "run_id": row.get("run_id"),
    }


# --------------------------------------------------------------------------- reading evidence


def _norm(key: Key, is_json: Sequence[bool]) -> Key:
    """An entity key as the job log or outbox compares it (some parts as text)."""
    return tuple(str(v) if j else v for v, j in zip(key, is_json))


def fetch_runs(
    conn: Connection, job_logs: Sequence[BoundJobLog], keys: Sequence[Key]
) -> dict[Key, list[Run]]:
    """Every run of the job logs on these keys, grouped by entity key, in start order."""
    found: dict[Key, list[Run]] = defaultdict(list)
    for job_log in job_logs:
        lookup = {_norm(k, job_log.key_as_text): k for k in keys}
        n = len(job_log.key)
        cols: list[ColumnElement] = [k.label(f"k{i}") for i, k in enumerate(job_log.key)]
        null = sa.null()
        cols += [
            job_log.id.label("id"),
            job_log.job.label("job"),
            (job_log.worker if job_log.worker is not None else null).label("worker"),
            (job_log.attempt if job_log.attempt is not None else null).label("attempt"),
            (job_log.status if job_log.status is not None else null).label("status"),
            job_log.started_at.label("started_at"),
            (job_log.finished_at if job_log.finished_at is not None else null).label("finished_at"),
        ]
        query = (
            sa.select(*cols)
            .select_from(job_log.source)
            .where(key_filter_clause(job_log.key, list(lookup)))
        )
        if job_log.where is not None:
            query = query.where(job_log.where)
        for row in conn.execute(query):
            m = row._mapping
            key = lookup.get(tuple(row[:n]))
            if key is None:  # a collation matched a key that is not exactly ours
                continue
            found[key].append(_run_from(m))
    for runs in found.values():
        runs.sort(key=_run_order)
    return found


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _contribution(column: BoundColumn) -> ColumnElement:
    value = column.value if column.value is not None else sa.literal_column("1")
    if column.spec.fold == "count":
        value = sa.case((value.is_not(None), 1), else_=0)
    if column.where is not None:
        value = sa.case((column.where, value))
    return value


@dataclass(frozen=True)
class _StreamKeys:
    """How a stream's rows are looked up by entity keys, and told apart again."""

    columns: list[ColumnElement]  # selected first in each row
    source: sa.FromClause
    where: ColumnElement
    key_of: Callable[[Any], Key | None]


def _stream_keys(stream: BoundStream, keys: Sequence[Key]) -> _StreamKeys:
    """The stream's key columns and ``key IN (keys)``; for a stream grouped under the
    entity key's collation (audit/collation.py), a join to the asked keys, whose
    position in ``keys`` names each row's key (a row may be spelled otherwise)."""
    if stream.key_collations is not None:
        source, which = match_keys(stream.table, stream.key, keys, "drift_asked_key")
        return _StreamKeys([which], source, sa.true(), lambda row: keys[row[0]])
    n = len(stream.key)
    wanted = set(keys)

    def key_of(row: Any) -> Key | None:
        key = tuple(row[:n])
        return key if key in wanted else None

    return _StreamKeys(
        [k.label(f"k{i}") for i, k in enumerate(stream.key)],
        stream.table,
        key_filter_clause(stream.key, keys),
        key_of,
    )


def _stream_of(bound: BoundSpec, column: BoundColumn, entity: BoundEntity | None) -> BoundStream:
    name = column.spec.stream
    return bound.streams[name] if entity is None else bound.stream_for(entity, name)


def fetch_effects(
    conn: Connection,
    bound: BoundSpec,
    column: BoundColumn,
    keys: Sequence[Key],
    entity: BoundEntity | None = None,
) -> dict[Key, dict[str, Decimal]]:
    """Each run's effect on a sum/count column, by key and str(run id) (needs run_id).

    With ``entity``, the stream's rows are those of the entity's keys under its key's
    collation (audit/collation.py)."""
    stream = _stream_of(bound, column, entity)
    assert stream.run_id is not None
    lookup = _stream_keys(stream, keys)
    query = (
        sa.select(
            *lookup.columns,
            stream.run_id.label("run_id"),
            sa.func.sum(_contribution(column)).label("effect"),
        )
        .select_from(lookup.source)
        .where(lookup.where, stream.run_id.is_not(None))
        .group_by(*lookup.columns, stream.run_id)
    )
    effects: dict[Key, dict[str, Decimal]] = defaultdict(dict)
    for row in conn.execute(query):
        key = lookup.key_of(row)
        if key is not None:
            effects[key][str(row.run_id)] = _number(row.effect) or Decimal(0)
    return effects


def fetch_stream_rows(
    conn: Connection,
    bound: BoundSpec,
    column: BoundColumn,
    keys: Sequence[Key],
    value: bool,
    entity: BoundEntity | None = None,
) -> dict[Key, list[dict[str, Any]]]:
    """A column's contributing stream rows for these keys, in order (history).

    With ``entity``, as in :func:`fetch_effects`."""
    stream = _stream_of(bound, column, entity)
    lookup = _stream_keys(stream, keys)
    cols: list[ColumnElement] = list(lookup.columns)
    cols += [o.label(f"o{i}") for i, o in enumerate(stream.order_by)]
    contribution = _contribution(column) if not value else column.value
    assert contribution is not None
    cols.append(contribution.label("v"))
    cols.append((stream.time if stream.time is not None else sa.null()).label("t"))
    cols.append((stream.run_id if stream.run_id is not None else sa.null()).label("r"))
    query = (
        sa.select(*cols)
        .select_from(lookup.source)
        .where(lookup.where)
        .order_by(*lookup.columns, *stream.order_by)
    )
    if value and column.where is not None:
        query = query.where(column.where)
    rows: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for row in conn.execute(query):
        m = row._mapping
        key = lookup.key_of(row)
        if key is not None:
            rows[key].append(
                {
                    "order": tuple(m[f"o{i}"] for i in range(len(stream.order_by))),
                    "value": m["v"],
                    "time": m["t"],
                    "run_id": m["r"],
                }
            )
    return rows


def window_effects(rows: Sequence[dict[str, Any]], runs: Sequence[Run]) -> dict[str, Decimal]:
    """Effects by time window: the rows whose time lies within each run's interval."""
    effects: dict[str, Decimal] = {}
    for run in runs:
        if run.start is None:
            continue
        total = Decimal(0)
        for row in rows:
            at = instant(row["time"])
            number = _number(row["value"])
            if at is None or number is None:
                continue
            if run.start <= at and (run.finish is None or at <= run.finish):
                total += number
        effects[str(run.id)] = total
    return effects


def fetch_messages(
    conn: Connection, outboxes: Sequence[BoundOutbox], keys: Sequence[Key]
) -> dict[Key, list[dict[str, Any]]]:
    """The newest outbox messages of each key (at most MAX_MESSAGES_SHOWN)."""
    found: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for outbox in outboxes:
        lookup = {_norm(k, outbox.key_as_text): k for k in keys}
        n = len(outbox.key)
        null = sa.null()
        query = (
            sa.select(
                *(k.label(f"k{i}") for i, k in enumerate(outbox.key)),
                outbox.id.label("id"),
                outbox.announces.label("announces"),
                (outbox.type if outbox.type is not None else null).label("type"),
                outbox.created_at.label("created_at"),
                (outbox.published_at if outbox.published_at is not None else null).label(
                    "published_at"
                ),
            )
            .select_from(outbox.table)
            .where(key_filter_clause(outbox.key, list(lookup)))
        )
        if outbox.where is not None:
            query = query.where(outbox.where)
        for row in conn.execute(query):
            m = row._mapping
            key = lookup.get(tuple(row[:n]))
            if key is None:
                continue
            found[key].append(
                {
                    "outbox": outbox.spec.name,
                    "id": m["id"],
                    "announces": m["announces"],
                    "type": m["type"],
                    "created_at": iso(m["created_at"]),
                    "published_at": iso(m["published_at"]),
                }
            )
    for key, messages in found.items():
        messages.sort(key=lambda msg: (str(msg["created_at"]), str(msg["id"])))
        found[key] = messages[-MAX_MESSAGES_SHOWN:]
    return found


def _run_from(m: Any) -> Run:
    """A Run from a row labelled id, job, worker, attempt, status, started_at, finished_at."""
    return Run(
        id=m["id"],
        job=str(m["job"]),
        worker=m["worker"],
        attempt=_int(m["attempt"]),
        status=m["status"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        start=instant(m["started_at"]),
        finish=instant(m["finished_at"]),
    )


def fetch_runs_by_id(
    conn: Connection, job_logs: Sequence[BoundJobLog], run_ids: Iterable[Any]
) -> dict[str, Run]:
    """Runs by str(id), for rows that name the run that wrote them."""
    ids = list(dict.fromkeys(r for r in run_ids if r is not None))
    found: dict[str, Run] = {}
    for job_log in job_logs:
        if not ids:
            break
        query = sa.select(
            job_log.id.label("id"),
            job_log.job.label("job"),
            (job_log.worker if job_log.worker is not None else sa.null()).label("worker"),
            (job_log.attempt if job_log.attempt is not None else sa.null()).label("attempt"),
            (job_log.status if job_log.status is not None else sa.null()).label("status"),
            job_log.started_at.label("started_at"),
            (job_log.finished_at if job_log.finished_at is not None else sa.null()).label(
                "finished_at"
            ),
        ).select_from(job_log.source)
        for chunk in range(0, len(ids), BATCH_KEYS):
            for row in conn.execute(query.where(job_log.id.in_(ids[chunk : chunk + BATCH_KEYS]))):
                m = row._mapping
                found.setdefault(str(m["id"]), _run_from(m))
    return found


# --------------------------------------------------------------------------- the pass


def attribute(
    conn: Connection,
    bound: BoundSpec,
    entity: BoundEntity,
    findings: Iterable[Finding],
    batch_keys: int | None = None,
) -> Iterator[Finding]:
    """Add ``cause`` and ``evidence`` to an entity's findings, batch by batch.

    Findings arrive ordered by key (as the diff returns them); memory holds one
    batch of keys and their evidence.
    """
    job_logs = [j for j in bound.job_logs.values() if j.spec.entity == entity.spec.name]
    outboxes = [o for o in bound.outboxes.values() if o.spec.entity == entity.spec.name]
    if not job_logs:
        yield from findings
        return
    batch_keys = batch_keys or BATCH_KEYS
    batch: list[Finding] = []
    keys: dict[Key, None] = {}
    for finding in findings:
        if all(k is None for k in finding.key):
            yield finding
            continue
        if finding.key not in keys and len(keys) >= batch_keys:
            yield from _attribute_batch(conn, bound, entity, job_logs, outboxes, batch, keys)
            batch, keys = [], {}
        keys.setdefault(finding.key, None)
        batch.append(finding)
    if batch:
        yield from _attribute_batch(conn, bound, entity, job_logs, outboxes, batch, keys)


def fetch_announced_states(
    conn: Connection, outbox: BoundOutbox, column: str, keys: Sequence[Key]
) -> dict[Key, list[dict[str, Any]]]:
    """Per key, each message's announced stream row and the state its payload carries."""
    lookup = {_norm(k, outbox.key_as_text): k for k in keys}
    n = len(outbox.key)
    query = (
        sa.select(
            *(k.label(f"k{i}") for i, k in enumerate(outbox.key)),
            outbox.id.label("id"),
            outbox.announces.label("announces"),
            outbox.created_at.label("created_at"),
            outbox.state[column].label("state"),
        )
        .select_from(outbox.table)
        .where(key_filter_clause(outbox.key, list(lookup)))
    )
    if outbox.where is not None:
        query = query.where(outbox.where)
    found: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for row in conn.execute(query):
        key = lookup.get(tuple(row[:n]))
        if key is not None:
            found[key].append(dict(row._mapping))
    return found


def payload_divergence(
    column: BoundColumn, rows: Sequence[dict[str, Any]], messages: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The first message whose announced state disagrees with the state rebuilt up to the
    stream row it announces: where the current row stopped following the facts.

    ``rows`` are the key's contributing stream rows in order (contributions for sum and
    count, values otherwise); ``messages`` carry ``announces``, ``state`` and
    ``created_at``. None when every announced state agrees (or none can be compared).
    """
    fold, initial = column.spec.fold, column.spec.initial
    # A float initial (TOML has no decimals) as the decimal it was written as: running
    # sums add Decimals (float + Decimal would raise).
    running: Any = (_number(initial) or 0) if fold in ("sum", "count") else initial
    after: dict[str, Any] = {}
    for position, row in enumerate(rows):
        value = row["value"]
        if fold in ("sum", "count"):
            running = running + (_number(value) or 0)
        elif fold == "last":
            running = value
        elif fold == "first":
            running = value if position == 0 else running
        elif value is not None:
            better = min if fold == "min" else max
            running = value if running is None else better(running, value)
        after[str(row["order"][0])] = running
    ordered = sorted(
        (m for m in messages if str(m["announces"]) in after),
        key=lambda m: (str(m["created_at"]), str(m["id"])),
    )
    for message in ordered:
        rebuilt = after[str(message["announces"])]
        announced = message["state"]
        if _same_state(announced, rebuilt):
            continue
        return {
            "first_divergence_at": iso(message["created_at"]),
            "divergence": {
                "message": message["id"],
                "announces": message["announces"],
                "announced_state": announced,
                "rebuilt_state": rebuilt if rebuilt is None else str(rebuilt),
            },
        }
    return None


def _same_state(announced: Any, rebuilt: Any) -> bool:
    if announced is None or rebuilt is None:
        return announced is None and rebuilt is None
    a, b = _number(announced), _number(rebuilt)
    if a is not None and b is not None and not isinstance(rebuilt, str):
        return a == b
    return str(announced) == str(rebuilt)


def _attribute_batch(
    conn: Connection,
    bound: BoundSpec,
    entity: BoundEntity,
    job_logs: list[BoundJobLog],
    outboxes: list[BoundOutbox],
    batch: list[Finding],
    keys: dict[Key, None],
) -> Iterator[Finding]:
    key_list = list(keys)
    runs = fetch_runs(conn, job_logs, key_list)
    messages = fetch_messages(conn, outboxes, key_list) if outboxes else {}
    failed = tuple(f for j in job_logs for f in j.spec.failed)
    columns = {c.spec.name: c for c in entity.columns}

    by_column: dict[str, list[Key]] = defaultdict(list)
    for finding in batch:
        if finding.kind == MISMATCH and finding.column in columns:
            by_column[finding.column].append(finding.key)
    effects: dict[str, dict[Key, dict[str, Decimal]]] = {}
    exact: dict[str, bool] = {}
    history: dict[str, dict[Key, list[dict[str, Any]]]] = {}
    column: BoundColumn | None
    for name, col_keys in by_column.items():
        column = columns[name]
        stream = bound.streams[column.spec.stream]
        if column.spec.fold in ("sum", "count"):
            if stream.run_id is not None:
                effects[name] = fetch_effects(conn, bound, column, col_keys, entity)
                exact[name] = True
            elif stream.time is not None:
                rows = fetch_stream_rows(conn, bound, column, col_keys, False, entity)
                effects[name] = {
                    k: window_effects(rows.get(k, []), runs.get(k, [])) for k in col_keys
                }
                exact[name] = False
        elif column.spec.fold in ("first", "last"):
            history[name] = fetch_stream_rows(conn, bound, column, col_keys, True, entity)
    # Outboxes whose payloads carry the column's state date the first divergence.
    divergence: dict[tuple[str, Key], dict[str, Any]] = {}
    for name, col_keys in by_column.items():
        column = columns[name]
        stating = [o for o in outboxes if name in o.state and o.spec.stream == column.spec.stream]
        if not stating:
            continue
        contributions = fetch_stream_rows(
            conn, bound, column, col_keys, column.spec.fold not in ("sum", "count"), entity
        )
        for outbox in stating:
            states = fetch_announced_states(conn, outbox, name, col_keys)
            for key in col_keys:
                found = payload_divergence(column, contributions.get(key, []), states.get(key, []))
                if found is not None and (name, key) not in divergence:
                    found["divergence"]["outbox"] = outbox.spec.name
                    divergence[(name, key)] = found

    for finding in batch:
        key_runs = runs.get(finding.key, [])
        pairs = overlapping_pairs(key_runs)
        retries = retry_pairs(key_runs, failed)
        column = columns.get(finding.column) if finding.column else None
        verdict: Verdict
        if finding.kind == MISMATCH and column is not None:
            fold = column.spec.fold
            if fold in ("sum", "count"):
                actual, expected = _number(finding.actual), _number(finding.expected)
                if actual is not None and expected is not None:
                    key_effects = effects.get(column.spec.name, {}).get(finding.key)
                    if key_effects is None and column.spec.name in effects:
                        key_effects = {}
                    verdict = classify_numeric(
                        actual - expected,
                        key_runs,
                        pairs,
                        retries,
                        key_effects,
                        exact.get(column.spec.name, False),
                        Decimal(str(column.spec.tolerance)),
                    )
                else:
                    verdict = _fallback(key_runs, pairs, retries, False, "the value")
            elif fold in ("first", "last"):
                verdict = classify_stale(
                    finding.actual,
                    history.get(column.spec.name, {}).get(finding.key, []),
                    fold,
                    key_runs,
                    pairs,
                    retries,
                )
            else:
                verdict = _fallback(key_runs, pairs, retries, False, "the value")
        else:
            verdict = _fallback(key_runs, pairs, retries, False, "the row")
        stated = divergence.get((finding.column or "", finding.key))
        if stated is not None:
            verdict = replace(
                verdict,
                first_divergence_at=stated["first_divergence_at"],
                detail={**(verdict.detail or {}), "divergence": stated["divergence"]},
            )
        yield replace(
            finding,
            cause=verdict.cause,
            evidence=_evidence(verdict, key_runs, pairs, retries, messages.get(finding.key)),
        )


def evidence_checks(
    conn: Connection,
    bound: BoundSpec,
    dialect: Dialect,
    snapshot_at: Any,
    only_keys: Mapping[str, Any] | None,
    stuck_after: dt.timedelta,
    say: Callable[[str], None],
) -> Iterator[Finding]:
    """The findings of witnesses (``also``) and outbox checks, after the diff.

    Outbox checks look at whole tables, so they run on full audits only.
    """
    from audit.outbox import check_outboxes
    from audit.witness import run_witnesses

    for name, entity in bound.entities.items():
        keys = None if only_keys is None else only_keys.get(name, [])
        if any(c.also for c in entity.columns) and (keys is None or keys):
            say(f"comparing {name} with its witnesses")
            yield from run_witnesses(conn, bound, entity, dialect, keys)
    if only_keys is None and bound.outboxes:
        say(f"checking {len(bound.outboxes)} outbox(es)")
        yield from check_outboxes(conn, bound, snapshot_at, stuck_after)


def _evidence(
    verdict: Verdict,
    runs: list[Run],
    pairs: list[tuple[Run, Run]],
    retries: list[tuple[Run | None, Run]],
    messages: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    involved = {str(r.id) for p in pairs for r in p} | {
        str(r.id) for p in retries for r in p if r is not None
    }
    shown = [r for r in runs if str(r.id) in involved]
    shown += [r for r in runs if str(r.id) not in involved][: max(0, MAX_RUNS_SHOWN - len(shown))]
    shown.sort(key=_run_order)
    evidence: dict[str, Any] = {
        "overlapping_runs": [[a.id, b.id] for a, b in pairs],
        "retried_runs": [r.id for _, r in retries],
        "retries": [[p.id if p else None, r.id] for p, r in retries],
        "first_divergence_at": verdict.first_divergence_at,
        "runs": [r.as_json() for r in shown],
        "runs_total": len(runs),
        "outbox": messages or [],
        "confidence": verdict.confidence,
        "why": verdict.why,
        "jobs": list(verdict.jobs),
    }
    if verdict.detail:
        evidence.update(verdict.detail)
    return evidence
