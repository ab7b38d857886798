"""Findings: the audit's data, and its long-format Parquet file.

A :class:`Finding` is one difference between what the streams say a row should
be and what the row is. Everything drift shows (summary, report, plan) is a
rendering of findings. Values are kept as the driver returned them and encoded
to JSON text exactly (decimals keep every digit).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

MISMATCH = "mismatch"
MISSING_ROW = "missing_row"
ORPHAN_ROW = "orphan_row"
DUPLICATE_KEY = "duplicate_key"
NULL_KEY = "null_key"
ROW_KINDS = (MISSING_ROW, ORPHAN_ROW, DUPLICATE_KEY, NULL_KEY)
WITNESS_DISAGREEMENT = "witness_disagreement"
UNANNOUNCED_EVENT = "unannounced_event"
DUPLICATE_ANNOUNCEMENT = "duplicate_announcement"
STUCK_MESSAGE = "stuck_message"
ORPHAN_MESSAGE = "orphan_message"
OUTBOX_KINDS = (UNANNOUNCED_EVENT, DUPLICATE_ANNOUNCEMENT, STUCK_MESSAGE, ORPHAN_MESSAGE)
KINDS = (MISMATCH, *ROW_KINDS, WITNESS_DISAGREEMENT, *OUTBOX_KINDS)
DRIFT_KINDS = (MISMATCH, *ROW_KINDS)  # a current row differs from its rebuild
ATTRIBUTED_CAUSES = ("lost_update", "double_apply", "stale_overwrite")
# What a job can be blamed for: the race causes, and outbox writes it got wrong.
JOB_FAULTS = (*ATTRIBUTED_CAUSES, UNANNOUNCED_EVENT, DUPLICATE_ANNOUNCEMENT)


class _Absent:
    """Marks a side that does not apply (the actual side of a missing row)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Finding:
    """One drifted value or row.

    ``expected``/``actual`` hold the values as read (a dict of audited columns
    for row-level kinds); :data:`ABSENT` where a side does not apply, which is
    different from a SQL NULL value (``None``).
    """

    entity: str
    key: tuple[Any, ...]
    kind: str
    column: str | None = None
    expected: Any = ABSENT
    actual: Any = ABSENT
    delta: float | None = None
    last_event_at: Any = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    cause: str | None = None  # audit.attribution.CAUSES; None: not attributed
    evidence: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key_json(self) -> str:
        return key_to_json(self.key)


# --------------------------------------------------------------------------- JSON


def to_json(value: Any) -> str:
    """Exact JSON text for a database value (decimals keep all their digits)."""
    # Evidence encodes every stream cell: the common types go through one dict
    # lookup on their exact type; subclasses and the rest take the full chain.
    encode = _ENCODE_EXACT.get(type(value))
    if encode is not None:
        return encode(value)
    return _to_json_any(value)


def _to_json_any(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, Decimal):
        return _decimal_json(value)
    if isinstance(value, str):
        return _encode_str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _encode_ascii(value.isoformat())
    if isinstance(value, dt.timedelta):
        return _encode_ascii(str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_json(value)
    if isinstance(value, uuid.UUID):
        return _encode_ascii(str(value))
    if isinstance(value, dict):
        return _dict_json(value)
    if isinstance(value, (list, tuple)):
        return _list_json(value)
    return _encode_str(str(value))


# json.dumps(text, ensure_ascii=False) and json.dumps(text) on a str are exactly
# these two encoders, without building a JSONEncoder per call.
_encode_str = json.encoder.encode_basestring
_encode_ascii = json.encoder.encode_basestring_ascii


def _float_json(value: float) -> str:
    return repr(value) if math.isfinite(value) else _encode_ascii(str(value))


def _decimal_json(value: Decimal) -> str:
    return format(value, "f") if value.is_finite() else _encode_ascii(str(value))


def _bytes_json(value: bytes | bytearray | memoryview) -> str:
    return '{"$base64": ' + _encode_ascii(base64.b64encode(bytes(value)).decode("ascii")) + "}"


def _dict_json(value: dict) -> str:
    return "{" + ",".join(f"{_encode_str(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"


def _list_json(value: list | tuple) -> str:
    return "[" + ",".join([to_json(v) for v in value]) + "]"


_ENCODE_EXACT: dict[type, Any] = {
    type(None): lambda value: "null",
    bool: lambda value: "true" if value else "false",
    int: str,
    float: _float_json,
    Decimal: _decimal_json,
    str: _encode_str,
    dt.datetime: lambda value: _encode_ascii(value.isoformat()),
    dt.date: lambda value: _encode_ascii(value.isoformat()),
    dt.time: lambda value: _encode_ascii(value.isoformat()),
    dt.timedelta: lambda value: _encode_ascii(str(value)),
    bytes: _bytes_json,
    uuid.UUID: lambda value: _encode_ascii(str(value)),
    dict: _dict_json,
    list: _list_json,
    tuple: _list_json,
}


def key_to_json(key: Iterable[Any]) -> str:
    return "[" + ",".join([to_json(v) for v in key]) + "]"


_DECODER = json.JSONDecoder(parse_float=Decimal)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def from_json(text: str | None) -> Any:
    """Parse JSON text written by :func:`to_json`, decimals as Decimal."""
    if text is None:
        return ABSENT
    if type(text) is str:
        # The decoder's scanner alone, when it reads the whole text from its first
        # character (the report decodes every embedded stream row). Anything else
        # (whitespace around the value, a byte order mark, an error) takes the
        # decoder's own path below, which answers or raises exactly as before.
        try:
            value, end = _SCAN(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return value
        if not text.startswith("\ufeff"):
            # json.loads(text, parse_float=Decimal) builds this decoder on every call.
            return _DECODER.decode(text)
    return json.loads(text, parse_float=Decimal)


def numeric_delta(expected: Any, actual: Any) -> float | None:
    """expected - actual when both are numbers (the correction to apply)."""
    if not (_is_number(expected) and _is_number(actual)):
        return None
    try:
        # Floats go through their shortest repr, the same digits as their JSON text.
        return float(_decimal(expected) - _decimal(actual))
    except (ArithmeticError, ValueError):
        return None


def _decimal(value: int | float | Decimal) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return False
    return not (isinstance(value, float) and not math.isfinite(value)) and not (
        isinstance(value, Decimal) and not value.is_finite()
    )


def iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


# --------------------------------------------------------------------------- Parquet

#: The columns of findings.parquet, in order (all text but ``delta``, a float64).
FINDINGS_COLUMNS = (
    "entity",
    "key",
    "column",
    "kind",
    "expected",
    "actual",
    "delta",
    "last_event_at",
    "extra",
    "cause",
    "evidence",
)


@cache
def findings_schema() -> pa.Schema:
    """The Arrow schema of findings.parquet (pyarrow loads on first use: an audit
    imports it while the database computes the diffs, see ``audit.run``)."""
    import pyarrow as pa

    return pa.schema(
        [(name, pa.float64() if name == "delta" else pa.string()) for name in FINDINGS_COLUMNS]
    )


def _side(value: Any) -> str | None:
    return None if value is ABSENT else to_json(value)


class FindingsWriter:
    """Streams findings into ``findings.parquet`` in row groups and counts them.

    Memory is bounded by the batch size, not by the number of findings.
    """

    def __init__(self, path: Path, batch_size: int = 10_000) -> None:
        self.path = path
        self.batch_size = batch_size
        self._writer: pq.ParquetWriter | None = None  # opened with the first batch
        self._rows: dict[str, list[Any]] = {name: [] for name in FINDINGS_COLUMNS}
        self.total = 0
        self.by_kind: Counter[str] = Counter()
        self.by_entity: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_column: dict[str, Counter[str]] = defaultdict(Counter)
        self.drifted_keys: dict[str, set[str]] = defaultdict(set)
        self.abs_delta: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        self.by_cause: Counter[str] = Counter()
        self.by_job: dict[str, Counter[str]] = defaultdict(Counter)
        self.job_delta: dict[str, float] = defaultdict(float)

    def add(self, finding: Finding) -> None:
        key = finding.key_json
        rows = self._rows
        rows["entity"].append(finding.entity)
        rows["key"].append(key)
        rows["column"].append(finding.column)
        rows["kind"].append(finding.kind)
        rows["expected"].append(_side(finding.expected))
        rows["actual"].append(_side(finding.actual))
        rows["delta"].append(finding.delta)
        rows["last_event_at"].append(iso(finding.last_event_at))
        rows["extra"].append(to_json(finding.extra) if finding.extra else None)
        rows["cause"].append(finding.cause)
        rows["evidence"].append(to_json(finding.evidence) if finding.evidence is not None else None)
        if finding.cause is not None:
            self.by_cause[finding.cause] += 1
        for job in (finding.evidence or {}).get("jobs", []):
            self.by_job[str(job)][finding.cause or finding.kind] += 1
            self.job_delta[str(job)] += abs(finding.delta or 0.0)
        self.total += 1
        self.by_kind[finding.kind] += 1
        self.by_entity[finding.entity][finding.kind] += 1
        if finding.column is not None:
            self.by_column[finding.entity][finding.column] += 1
        if finding.kind in DRIFT_KINDS:
            self.drifted_keys[finding.entity].add(key)
        if finding.delta is not None and finding.column is not None:
            stats = self.abs_delta[finding.entity].setdefault(
                finding.column, {"sum": 0.0, "max": 0.0}
            )
            stats["sum"] += abs(finding.delta)
            stats["max"] = max(stats["max"], abs(finding.delta))
        if len(rows["entity"]) >= self.batch_size:
            self._flush()

    def add_all(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    def _parquet(self) -> pq.ParquetWriter:
        if self._writer is None:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(str(self.path), findings_schema(), compression="zstd")
        return self._writer

    def _flush(self) -> None:
        if not self._rows["entity"]:
            return
        import pyarrow as pa

        batch = pa.RecordBatch.from_pydict(self._rows, schema=findings_schema())
        self._parquet().write_batch(batch)
        for values in self._rows.values():
            values.clear()

    def close(self) -> None:
        self._flush()
        self._parquet().close()

    def counts(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_kind": {k: self.by_kind[k] for k in KINDS if self.by_kind[k]}
            | {k: v for k, v in self.by_kind.items() if k not in KINDS},
            "by_entity": {
                entity: {
                    "total": sum(kinds.values()),
                    "drifted_rows": len(self.drifted_keys[entity]),
                    "by_kind": dict(kinds),
                    "by_column": dict(self.by_column.get(entity, {})),
                }
                for entity, kinds in self.by_entity.items()
            },
            "drifted_rows": sum(len(keys) for keys in self.drifted_keys.values()),
            "abs_delta": {e: dict(cols) for e, cols in self.abs_delta.items()},
            "by_cause": dict(self.by_cause.most_common()),
            "by_job": {
                job: {"total": sum(causes.values()), "by_cause": dict(causes)}
                for job, causes in sorted(
                    self.by_job.items(), key=lambda item: (-sum(item[1].values()), item[0])
                )
            },
        }

    def fix_first(self) -> dict[str, Any] | None:
        """The job to fix first: the most findings it is blamed for, then the largest |delta|."""
        scored = [
            (sum(c[k] for k in JOB_FAULTS), self.job_delta[job], job, c)
            for job, c in self.by_job.items()
        ]
        scored = [s for s in scored if s[0] > 0]
        if not scored:
            return None
        n, delta, job, causes = min(scored, key=lambda s: (-s[0], -s[1], s[2]))
        parts = [f"{causes[k]} {k.replace('_', ' ')}(s)" for k in JOB_FAULTS if causes[k]]
        reason = f"{job} is blamed for {n} finding(s): {', '.join(parts)}"
        if delta:
            reason += f"; total |delta| {delta:g}"
        return {"job": job, "findings": n, "reason": reason}


def read_findings(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each finding row of a findings.parquet as a dict (in batches)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    for batch in parquet.iter_batches(batch_size=10_000):
        yield from batch.to_pylist()
