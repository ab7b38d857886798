"""Incremental audits (``drift audit --since-last``): only the keys that moved.

A full audit rebuilds every key. An incremental audit finds, inside the same
snapshot, the keys that stream rows added since an earlier audit touched, and
runs the normal diff restricted to those keys (``only_keys`` with a subquery,
so no key list crosses the wire and no parameter limit applies).

What an incremental audit remembers lives in a small JSON state file (by
default ``.drift-state.json`` beside the spec), one entry per spec hash and
masked database URL::

    {"version": 1, "audits": {"<spec sha256>|<masked url>": {"marks": [
        {"taken_at": "2026-03-14T09:00:00+00:00",
         "streams": {"stock": [50000], "order_events": [50000]}}]}}}

Each mark is one successful audit: its snapshot time and each stream's
highest ``order_by`` it could see. Rows can commit late with a smaller
``order_by`` than an earlier audit saw (a sequence value is taken before the
transaction commits), so an incremental audit does not start from the latest
mark: it starts from the newest mark taken at least ``lookback`` before the
latest one. A row is then missed only if its transaction stayed open longer
than ``lookback``. docs/incremental.md says what an incremental audit cannot
see and how often to run a full one.

Extension point: streams are the only sources of touched keys today. Job logs
and outboxes add their own entries to :func:`_sources` and their own sections
beside ``"streams"`` in a mark.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.sql.elements import ColumnElement

from audit.database import mask_url
from audit.errors import StateError
from audit.schema import BoundEntity, BoundSpec, BoundStream
from audit.spec import Spec

STATE_FILE = ".drift-state.json"
STATE_VERSION = 1
DEFAULT_LOOKBACK = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class Mark:
    """One successful audit: when its snapshot was taken, and how far each stream went."""

    taken_at: dt.datetime
    streams: Mapping[str, list[Any] | None]

    def to_json(self) -> dict[str, Any]:
        return {"taken_at": self.taken_at.isoformat(), "streams": dict(self.streams)}


@dataclass(frozen=True)
class Scope:
    """What an incremental audit covers: the keys to audit, and from which marks."""

    only_keys: dict[str, sa.Select | sa.CompoundSelect]
    since: Mark
    latest: Mark
    lookback: dt.timedelta

    def describe(self) -> dict[str, Any]:
        """For summary.json: where this audit started reading each stream."""
        return {
            "since": self.since.to_json(),
            "previous_audit_at": self.latest.taken_at.isoformat(),
            "lookback_seconds": self.lookback.total_seconds(),
        }


class IncrementalState:
    """The state file entry of one spec and database."""

    def __init__(self, path: Path, key: str, lookback: dt.timedelta) -> None:
        self.path = path
        self.key = key
        self.lookback = lookback
        self.marks = self._load()

    @classmethod
    def open(
        cls,
        spec: Spec,
        url: URL,
        state: str | Path | None = None,
        lookback: dt.timedelta = DEFAULT_LOOKBACK,
    ) -> IncrementalState:
        path = Path(state) if state is not None else spec.base_dir / STATE_FILE
        return cls(path.absolute(), f"{spec.sha256}|{mask_url(url)}", lookback)

    @property
    def first_run(self) -> bool:
        return not self.marks

    def _load(self) -> list[Mark]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            entry = data["audits"].get(self.key)
            if entry is None:
                return []
            return [
                Mark(taken_at=_utc(m["taken_at"]), streams=dict(m["streams"]))
                for m in entry["marks"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(
                f"state file {self.path} is corrupt ({type(exc).__name__}: {exc}); "
                "delete it to start over with a full audit"
            ) from None

    def scope(self, conn: Connection, bound: BoundSpec) -> Scope | None:
        """The keys touched since the chosen mark, per entity; None on the first run."""
        if self.first_run:
            return None
        latest = self.marks[-1]
        horizon = latest.taken_at - self.lookback
        old_enough = [m for m in self.marks if m.taken_at <= horizon]
        since = old_enough[-1] if old_enough else self.marks[0]
        only_keys: dict[str, sa.Select | sa.CompoundSelect] = {}
        for name, entity in bound.entities.items():
            selects = [
                _touched(stream, since.streams.get(stream.spec.name))
                for stream in _sources(bound, entity)
            ]
            only_keys[name] = selects[0] if len(selects) == 1 else sa.union(*selects)
        return Scope(only_keys=only_keys, since=since, latest=latest, lookback=self.lookback)

    def record(self, taken_at: Any, watermarks: Mapping[str, Mapping[str, Any]]) -> None:
        """Add the mark of a successful audit and prune the ones no audit will start from."""
        mark = Mark(
            taken_at=_utc(taken_at),
            streams={name: w["value"] for name, w in watermarks.items()},
        )
        marks = [*self.marks, mark]
        horizon = mark.taken_at - self.lookback
        older = [m for m in marks if m.taken_at <= horizon]
        keep = [m for m in marks if m.taken_at > horizon]
        marks = older[-1:] + keep
        data: dict[str, Any] = {"version": STATE_VERSION, "audits": {}}
        try:
            current = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(current, dict) and isinstance(current.get("audits"), dict):
                data["audits"] = current["audits"]
        except (OSError, ValueError):
            pass
        data["audits"][self.key] = {"marks": [m.to_json() for m in marks]}
        _write_atomically(self.path, json.dumps(data, indent=2) + "\n")
        self.marks = marks


def _sources(bound: BoundSpec, entity: BoundEntity) -> list[BoundStream]:
    """The tables whose new rows touch an entity's keys (streams; later job logs, outboxes).

    Each stream as the entity reads it: its touched keys are compared with the
    entity's keys (and its own) under the entity key's collation.
    """
    return [bound.stream_for(entity, name) for name in entity.spec.streams]


def _touched(stream: BoundStream, since: list[Any] | None) -> sa.Select:
    """``SELECT key FROM stream WHERE order_by > since`` (all rows when None).

    No DISTINCT: it only feeds ``key IN (...)``, and SQLite would satisfy a
    DISTINCT by walking a whole key index instead of the ``order_by`` range.
    """
    query = sa.select(*stream.key).select_from(stream.table)
    if since is not None and None not in since:
        # An order_by that is not unique (a timestamp) can tie with the mark: a row
        # committed after the audit with the mark's very value is new, and ``>`` would
        # never see it, whatever the lookback. Such a stream re-reads the mark's rows.
        query = query.where(_after(stream.order_by, since, inclusive=not stream.order_is_unique))
    return query


def _after(
    order_by: Sequence[ColumnElement], values: Sequence[Any], inclusive: bool = False
) -> ColumnElement:
    """Lexicographic ``(o1, o2, ...) > (v1, v2, ...)`` (``>=`` when ``inclusive``),
    portable to every engine."""
    bound = [sa.literal(_typed(o, v), type_=o.type) for o, v in zip(order_by, values)]
    clauses = []
    last = len(order_by) - 1
    for i in range(len(order_by)):
        equal = [order_by[j] == bound[j] for j in range(i)]
        beyond = order_by[i] >= bound[i] if inclusive and i == last else order_by[i] > bound[i]
        clauses.append(sa.and_(*equal, beyond))
    return sa.or_(*clauses)


def _typed(column: ColumnElement, value: Any) -> Any:
    """A watermark value back in the column's Python type (the state file holds JSON)."""
    if value is None or not isinstance(value, str):
        return value
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if python_type is dt.datetime:
        return dt.datetime.fromisoformat(value)
    if python_type is dt.date:
        return dt.date.fromisoformat(value)
    if python_type is Decimal:
        return Decimal(value)
    return value


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write the state file {path}: {exc.strerror}") from None
