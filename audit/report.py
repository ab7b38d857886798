"""The HTML incident report: its data first, then one self-contained file.

:func:`build_report` reads an audit folder (summary.json, findings.parquet and,
when present, evidence.parquet, the attribution columns of findings.parquet and
plan/plan.json with plan/approvals.json) into a :class:`Report` of plain
frozen dataclasses; :func:`render_report` lays that out with
``templates/report.html.j2``. No database is needed, so ``drift report
AUDIT_DIR`` re-renders a report anywhere.

Every value that came from the database is untrusted: templates autoescape,
JSON for the page's script goes through :func:`safe_json` into a
``<script type="application/json">`` element, and a Content-Security-Policy
allows only the page's own inline script and style (by hash), so even a
templating mistake could not load or run anything else.

With a million findings the report embeds only the top N (row-level kinds
first, then by absolute delta, see :mod:`audit.ranking`); the summary cards
and charts still count every finding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import chain
from operator import gt, itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from markupsafe import Markup, escape

from audit.charts import (
    BarChart,
    delta_bins,
    describe_width,
    epoch_seconds,
    layout,
    parse_time,
    time_bins,
)
from audit.collector import collector_paused
from audit.database import mask_text
from audit.errors import AuditFolderError, OutputError
from audit.evidence import EVIDENCE_KEYS, ROWS_PER_KEY, EvidenceRow, read_evidence
from audit.export import FINDINGS_CSV, write_findings_csv
from audit.findings import KINDS, ROW_KINDS, from_json, to_json
from audit.output import FINDINGS, REPORT, read_parquet, read_summary
from audit.ranking import top_indices
from audit.templating import html_environment

DEFAULT_TOP = 2000
CLIP = 300
# Stream rows embedded in the HTML in all: per key and stream, as many of the
# collected rows as fit (at least MIN_EVIDENCE_ROWS), keeping the file small.
HTML_EVIDENCE_ROWS = 20_000
MIN_EVIDENCE_ROWS = 5
CAUSES = ("lost_update", "double_apply", "stale_overwrite", "unexplained_write", "unknown")
PLAN_FILE = Path("plan") / "plan.json"
APPROVALS_FILE = Path("plan") / "approvals.json"


# --------------------------------------------------------------------------- data


class Cell(NamedTuple):
    """A value as displayed: text (clipped), and whether it is SQL NULL.

    A named tuple rather than a dataclass: the report builds a few hundred
    thousand of them for a large audit.
    """

    text: str
    null: bool = False
    full_length: int = 0

    @property
    def clipped(self) -> bool:
        return self.full_length > len(self.text)


@dataclass(frozen=True)
class StreamEvidence:
    """The last rows of one stream for one key, newest first."""

    source: str
    columns: tuple[str, ...]
    roles: dict[str, str]  # column name -> "key" / "order_by" / "time"
    rows: tuple[tuple[Cell, ...], ...]
    collected: int  # rows in evidence.parquet for this key and source


@dataclass(frozen=True)
class Run:
    """A job run that touched the key, placed on the key's small timeline."""

    id: str
    job: str
    worker: str
    attempt: str
    status: str
    started_at: str
    finished_at: str
    overlapping: bool
    retried: bool
    x: float
    width: float
    y: float


@dataclass(frozen=True)
class Attribution:
    """Why a row drifted, as the attribution step explained it."""

    cause: str | None
    confidence: str | None
    why: str | None
    first_divergence_at: str | None
    runs: tuple[Run, ...] = ()
    overlapping_pairs: tuple[str, ...] = ()
    retried_runs: tuple[str, ...] = ()
    outbox_columns: tuple[str, ...] = ()
    outbox: tuple[tuple[Cell, ...], ...] = ()
    timeline_height: int = 0
    timeline_start: str = ""
    timeline_end: str = ""


@dataclass(frozen=True)
class PlanAction:
    """What the remediation plan will do to a finding's row."""

    mode: str
    kind: str
    before: Cell
    after: Cell
    sql: tuple[str, ...]


@dataclass(frozen=True)
class FindingRow:
    """One embedded finding, as the table and its evidence panel show it."""

    index: int
    entity: str
    key: str
    column: str | None
    kind: str
    expected: Cell
    actual: Cell
    delta: str
    abs_delta: float | None
    time: str | None
    cause: str | None
    attribution: Attribution | None
    evidence: tuple[StreamEvidence, ...]
    evidence_at: int | None  # index of the row that shows this key's evidence
    plan: tuple[PlanAction, ...]


@dataclass(frozen=True)
class EntityStats:
    name: str
    table: str
    rows: int | None
    drifted_rows: int
    findings: int
    by_kind: dict[str, int]
    columns: tuple[ColumnStats, ...]
    rows_estimated: bool = False  # the planner statistics' count (a big table)


@dataclass(frozen=True)
class ColumnStats:
    name: str
    fold: str
    stream: str
    findings: int
    abs_delta_total: str | None
    abs_delta_max: str | None


@dataclass(frozen=True)
class PlanInfo:
    plan_id: str
    created_at: str
    actions: int
    approvals: tuple[dict[str, str], ...]
    problem: str | None = None

    @property
    def approved(self) -> bool:
        return bool(self.approvals) and self.problem is None


@dataclass(frozen=True)
class Report:
    """Everything the report shows, before any HTML."""

    database: str
    dialect: str
    snapshot_at: str
    isolation: str
    created_at: str
    scope: str
    spec_sha256: str
    spec_path: str
    version: str
    watermarks: tuple[dict[str, str], ...]
    plan: PlanInfo | None
    entities_audited: int
    rows_audited: int | None  # None: an incremental audit counts no whole tables
    stream_rows: int | None
    total: int
    drifted_rows: int
    by_kind: dict[str, int]
    by_cause: dict[str, int]
    fix_first: dict[str, Any] | None
    by_job: dict[str, dict[str, Any]]
    entities: tuple[EntityStats, ...]
    delta_charts: tuple[BarChart, ...]
    time_chart: BarChart | None
    keys_without_time: int
    findings: tuple[FindingRow, ...]
    shown: int
    limit: int
    has_attribution: bool
    has_evidence: bool
    columns_filter: tuple[str, ...]
    command: str | None
    folder_name: str
    script_data: dict[str, Any] = field(default_factory=dict)
    rows_estimated: bool = False  # some entity's count is the planner statistics' estimate
    stream_rows_estimated: bool = False

    @property
    def truncated(self) -> bool:
        return self.shown < self.total


# --------------------------------------------------------------------------- helpers


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _total(values: Any) -> int | None:
    counts = [_count(v) for v in values]
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


def _fix_first(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The job attribution blames most (summary.json's ``fix_first``), if any."""
    value = summary.get("fix_first")
    if not isinstance(value, dict) or not value.get("job"):
        return None
    return {
        "job": _text(value.get("job")),
        "findings": value.get("findings"),
        "reason": _text(value.get("reason")),
    }


def _by_job(counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Findings blamed on each job, by cause (summary.json's ``counts.by_job``)."""
    by_job = counts.get("by_job")
    if not isinstance(by_job, dict):
        return {}
    return {
        _text(job): {
            "total": int(stats.get("total", 0)),
            "by_cause": {_text(k): int(v) for k, v in stats.get("by_cause", {}).items()},
        }
        for job, stats in by_job.items()
        if isinstance(stats, dict)
    }


def safe_json(data: Any) -> Markup:
    """JSON that can sit inside ``<script type="application/json">`` verbatim.

    ``<``, ``>`` and ``&`` become \\u escapes (so ``</script>`` or ``<!--``
    in a value cannot end or confuse the element), as do U+2028/U+2029.
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, replacement in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, replacement)
    return Markup(text)


def clip(text: str, limit: int = CLIP) -> Cell:
    length = len(text)
    # One character over the limit is shown whole: "…" in its place would hide it
    # and, the clipped text being as long as the value, get no "(N chars)" note.
    if length <= limit + 1:
        return Cell(text, False, length)
    return Cell(text[:limit] + "…", False, length)


_NULL = Cell("NULL", null=True, full_length=4)
_UNKNOWN = Cell("?")  # a stream "row" in evidence.parquet that is not a JSON object


def json_cell(json_text: str | None) -> Cell:
    """A finding's expected/actual: the exact JSON text; empty when absent."""
    if json_text is None:
        return Cell("", full_length=0)
    if json_text == "null":
        return _NULL
    return clip(json_text)


def value_cell(value: Any) -> Cell:
    """A value of a stream row or outbox message: strings bare, NULL marked."""
    if value is None:
        return _NULL
    text = value if isinstance(value, str) else to_json(value)
    # clip(), inlined: the report builds a cell for every embedded stream value.
    length = len(text)
    if length <= CLIP + 1:
        return Cell(text, False, length)
    return Cell(text[:CLIP] + "…", False, length)


def exact_delta(expected: str | None, actual: str | None, delta: float | None) -> str:
    """expected - actual with every digit when both sides are JSON numbers."""
    if delta is None:
        return ""
    try:
        e, a = from_json(expected), from_json(actual)
        numbers = all(isinstance(v, (int, Decimal)) and not isinstance(v, bool) for v in (e, a))
        if numbers:
            value = Decimal(e) - Decimal(a)
            return ("+" if value > 0 else "") + format(value, "f")
    except (InvalidOperation, ValueError, TypeError):
        pass
    return f"{delta:+g}"


def _number_text(x: float) -> str:
    return f"{int(x):,}" if x == int(x) and abs(x) < 1e15 else f"{x:,.6g}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else to_json(value)


def _sha256_source(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


# --------------------------------------------------------------------------- reading


def _read_findings(folder: Path) -> pa.Table:
    try:
        return read_parquet(folder / FINDINGS)
    except (OSError, pa.ArrowException) as exc:
        raise AuditFolderError(f"{folder / FINDINGS} is unreadable or truncated: {exc}") from None


def top_findings(folder: Path, limit: int = DEFAULT_TOP) -> tuple[list[dict[str, Any]], int]:
    """The findings a reviewer sees first (see :mod:`audit.ranking`), and the total."""
    table = _read_findings(folder)
    return table.take(top_indices(table, limit)).to_pylist(), table.num_rows


def _plan(folder: Path) -> tuple[PlanInfo | None, dict[tuple[str, str, str | None], list[dict]]]:
    """The plan's header facts and its actions by (entity, key, column)."""
    path = folder / PLAN_FILE
    if not path.is_file():
        return None, {}
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan, dict) or not isinstance(plan.get("actions", []), list):
            raise ValueError("not a plan object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return PlanInfo("", "", 0, (), problem=f"{PLAN_FILE} is unreadable: {exc}"), {}
    approvals: list[dict[str, str]] = []
    problem = None
    approvals_path = folder / APPROVALS_FILE
    if approvals_path.is_file():
        try:
            raw = json.loads(approvals_path.read_text(encoding="utf-8"))
            approvals = [
                {k: _text(a.get(k)) for k in ("by", "at", "note")}
                for a in raw.get("approvals", [])
                if isinstance(a, dict)
            ]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            problem = f"{APPROVALS_FILE} is unreadable: {exc}"
    actions: dict[tuple[str, str, str | None], list[dict]] = {}
    for action in plan.get("actions", []):
        if isinstance(action, dict):
            pair = (
                _text(action.get("entity")),
                _text(action.get("key")),
                action.get("column") if isinstance(action.get("column"), str) else None,
            )
            actions.setdefault(pair, []).append(action)
    info = PlanInfo(
        plan_id=_text(plan.get("plan_id")),
        created_at=_text(plan.get("created_at")),
        actions=len(plan.get("actions", [])),
        approvals=tuple(approvals),
        problem=problem,
    )
    return info, actions


def _plan_actions(actions: list[dict]) -> tuple[PlanAction, ...]:
    out = []
    for a in actions:
        sql = a.get("sql") or []
        out.append(
            PlanAction(
                mode=_text(a.get("mode")),
                kind=_text(a.get("kind")),
                before=value_cell(a.get("before")),
                after=value_cell(a.get("after")),
                sql=tuple(_text(s) for s in (sql if isinstance(sql, list) else [sql])),
            )
        )
    return tuple(out)


def _stream_evidence(
    rows: list[EvidenceRow],
    per_source: int,
    cells: dict[Any, Cell] | None = None,
    roles_of: dict[str | None, dict[str, str]] | None = None,
) -> tuple[StreamEvidence, ...]:
    """The evidence panel of one key: ``rows`` sorted by source, newest first.

    ``cells`` and ``roles_of`` are caches that a caller may share between keys:
    the cell of a string or integer value (stream rows repeat their keys and
    kinds), and the roles decoded from a row's ``roles`` text.
    """
    if cells is None:
        cells = {}
    if roles_of is None:
        roles_of = {}
    by_source: dict[str, list[EvidenceRow]] = {}
    for row in rows:
        by_source.setdefault(row.source, []).append(row)
    out = []
    cached = cells.get
    for source, items in by_source.items():
        decoded = [from_json(r.row) for r in items[:per_source]]
        columns: dict[str, None] = {}
        for d in decoded:
            if isinstance(d, dict):
                columns.update(dict.fromkeys(d))
        roles = roles_of.get(items[0].roles)
        if roles is None:
            roles = roles_of[items[0].roles] = _roles(items[0].roles)
        names = tuple(columns)
        unknown = (_UNKNOWN,) * len(names)
        cell_rows = []
        for d in decoded:
            if not isinstance(d, dict):
                cell_rows.append(unknown)
                continue
            line = []
            for name in names:
                value = d.get(name)
                # Only exact str and int: True == 1 and Decimal("1.0") == Decimal("1.00")
                # as keys, yet their cells differ.
                kind = type(value)
                if kind is str or kind is int:
                    cell = cached(value)
                    if cell is None:
                        cell = cells[value] = value_cell(value)
                else:
                    cell = value_cell(value)
                line.append(cell)
            cell_rows.append(tuple(line))
        out.append(
            StreamEvidence(
                source=source,
                columns=names,
                roles=dict(roles),
                rows=tuple(cell_rows),
                collected=len(items),
            )
        )
    return tuple(out)


def _roles(text: str | None) -> dict[str, str]:
    """Column name -> role ("key", "order_by", "time") from an evidence row's roles."""
    roles: dict[str, str] = {}
    try:
        spec_roles = json.loads(text or "{}")
    except ValueError:
        spec_roles = {}
    if not isinstance(spec_roles, dict):
        spec_roles = {}
    for role in ("key", "order_by"):
        for name in spec_roles.get(role) or []:
            roles.setdefault(str(name), role)
    if spec_roles.get("time"):
        roles.setdefault(str(spec_roles["time"]), "time")
    return roles


def _iso_seconds(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _attribution(cause: str | None, evidence_json: str | None) -> Attribution | None:
    if cause is None and evidence_json is None:
        return None
    try:
        data = json.loads(evidence_json) if evidence_json else {}
    except ValueError:
        data = {"why": "(attribution evidence is not valid JSON)"}
    if not isinstance(data, dict):
        data = {}
    overlapping = [
        [str(i) for i in pair]
        for pair in data.get("overlapping_runs") or []
        if isinstance(pair, (list, tuple))
    ]
    in_overlap = {i for pair in overlapping for i in pair}
    retried = {str(i) for i in data.get("retried_runs") or []}
    raw_runs = [r for r in data.get("runs") or [] if isinstance(r, dict)]
    spans = []
    for r in raw_runs:
        start = parse_time(r.get("started_at"))
        end = parse_time(r.get("finished_at"))
        spans.append((start, end if end is not None else start))
    known = [t for s in spans for t in s if t is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
    span = (hi - lo) or 1.0
    width, left = 420.0, 4.0
    runs = []
    for i, (r, (start, end)) in enumerate(zip(raw_runs, spans)):
        run_id = _text(r.get("id"))
        x = left + (0.0 if start is None else width * (start - lo) / span)
        w = 0.0 if start is None or end is None else width * (end - start) / span
        runs.append(
            Run(
                id=run_id,
                job=_text(r.get("job")),
                worker=_text(r.get("worker")),
                attempt=_text(r.get("attempt")),
                status=_text(r.get("status")),
                started_at=_text(r.get("started_at")),
                finished_at=_text(r.get("finished_at")),
                overlapping=run_id in in_overlap,
                retried=run_id in retried,
                x=round(x, 2),
                width=round(max(w, 3.0), 2),
                y=float(6 + 18 * i),
            )
        )
    outbox_raw = [m for m in data.get("outbox") or [] if isinstance(m, dict)]
    outbox_columns: dict[str, None] = {}
    for m in outbox_raw:
        outbox_columns.update(dict.fromkeys(str(k) for k in m))
    outbox = tuple(tuple(value_cell(m.get(c)) for c in outbox_columns) for m in outbox_raw)
    first = data.get("first_divergence_at")
    return Attribution(
        cause=cause,
        confidence=_text(data.get("confidence")) or None,
        why=_text(data.get("why")) or None,
        first_divergence_at=_text(first) or None,
        runs=tuple(runs),
        overlapping_pairs=tuple(" ↔ ".join(p) for p in overlapping),
        retried_runs=tuple(sorted(retried)),
        outbox_columns=tuple(outbox_columns),
        outbox=outbox,
        timeline_height=int(12 + 18 * len(runs)) if runs else 0,
        timeline_start=_iso_seconds(lo) if known else "",
        timeline_end=_iso_seconds(hi) if known else "",
    )


# --------------------------------------------------------------------------- charts


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Each row's index into the column's distinct values (a null is one more value)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = len(encoded.dictionary)
    indices = pc.fill_null(encoded.indices, distinct).to_numpy(zero_copy_only=False)
    return indices.astype(np.int64), distinct + 1


def _groups(first: pa.ChunkedArray, second: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by (first, second): the row order, and where each group starts in it.

    Plain numpy on dictionary codes: Arrow's own group_by imports pandas.
    """
    a, _ = _codes(first)
    b, b_size = _codes(second)
    pair = a * b_size + b
    order = np.argsort(pair, kind="stable")
    _, starts = np.unique(pair[order], return_index=True)
    return order, starts


def _delta_charts(table: pa.Table) -> tuple[BarChart, ...]:
    numeric = table.select(["entity", "column", "delta"]).filter(
        pc.and_(
            pc.and_(pc.is_valid(table["delta"]), pc.is_valid(table["column"])),
            pc.is_valid(table["entity"]),
        )
    )
    if numeric.num_rows == 0:
        return ()
    order, starts = _groups(numeric["entity"], numeric["column"])
    deltas = np.split(numeric["delta"].to_numpy().astype(np.float64)[order], starts[1:])
    firsts = numeric.take(pa.array(order[starts]))
    labels = zip(firsts["entity"].to_pylist(), firsts["column"].to_pylist())
    charts = []
    for (entity, column), values in sorted(zip(labels, deltas), key=lambda group: group[0]):
        bins = delta_bins(values)
        charts.append(
            layout(
                f"{entity}.{column}",
                f"{values.size:,} numeric finding(s); delta = expected − actual",
                bins,
                "finding(s)",
            )
        )
    return tuple(charts)


_FIRST_DIVERGENCE = r'"first_divergence_at"\s*:\s*"(?P<t>[^"\\]*)"'


def _time_chart(table: pa.Table, attributed: bool) -> tuple[BarChart | None, int]:
    """Drifted keys by the time of the last stream row (or first divergence)."""
    table = table.filter(pc.not_equal(table["kind"], "null_key"))
    seconds = epoch_seconds(table["last_event_at"])
    basis = "the last stream row that touched them"
    if attributed:
        found = pc.extract_regex(pc.fill_null(table["evidence"], ""), _FIRST_DIVERGENCE)
        divergence = epoch_seconds(pc.struct_field(found, "t"))
        if np.isfinite(divergence).any():
            basis = "their first divergence (attribution), else the last stream row"
            seconds = np.where(np.isfinite(divergence), divergence, seconds)
    # Each key once, at its earliest time; a key without any time is not charted.
    order, starts = _groups(table["entity"], table["key"])
    earliest = np.fmin.reduceat(seconds[order], starts) if starts.size else seconds
    valid = earliest[np.isfinite(earliest)]
    without = int(earliest.size - valid.size)
    if valid.size == 0:
        return None, without
    bins, width = time_bins(valid)
    chart = layout(
        "Drifted keys over time (UTC)",
        f"{valid.size:,} key(s) by {basis}; one bar = {describe_width(width)}",
        bins,
        "key(s)",
    )
    return chart, without


# --------------------------------------------------------------------------- building


def build_report(
    folder: str | Path, limit: int = DEFAULT_TOP, folder_name: str | None = None
) -> Report:
    """Read an audit folder into a :class:`Report` (no HTML yet)."""
    folder = Path(folder)
    summary = read_summary(folder)
    table = _read_findings(folder)
    names = set(table.column_names)
    # The columns always exist now; attribution is shown when any finding carries it.
    has_attribution = any(
        name in names and table[name].null_count < table.num_rows for name in ("cause", "evidence")
    )
    if has_attribution:
        for name in ("cause", "evidence"):
            if name not in names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    top = table.take(top_indices(table, limit)).to_pylist()

    plan_info, plan_actions = _plan(folder)
    pairs = {(f["entity"], f["key"]) for f in top}
    evidence = read_evidence(folder, pairs)
    groups = sum(len({r.source for r in rows}) for rows in evidence.values())
    per_source = max(MIN_EVIDENCE_ROWS, min(ROWS_PER_KEY, HTML_EVIDENCE_ROWS // max(groups, 1)))
    first_row_of: dict[tuple[str, str], int] = {}
    rows: list[FindingRow] = []
    cells: dict[Any, Cell] = {}
    roles_of: dict[str | None, dict[str, str]] = {}
    for i, f in enumerate(top):
        pair = (f["entity"], f["key"])
        shows_evidence = pair not in first_row_of and pair in evidence
        if shows_evidence:
            first_row_of[pair] = i
        actions = plan_actions.get((f["entity"], f["key"], f["column"]), [])
        rows.append(
            FindingRow(
                index=i,
                entity=f["entity"],
                key=f["key"],
                column=f["column"],
                kind=f["kind"],
                expected=json_cell(f["expected"]),
                actual=json_cell(f["actual"]),
                delta=exact_delta(f["expected"], f["actual"], f["delta"]),
                abs_delta=None if f["delta"] is None else abs(f["delta"]),
                time=f["last_event_at"],
                cause=f.get("cause"),
                attribution=(
                    _attribution(f.get("cause"), f.get("evidence")) if has_attribution else None
                ),
                evidence=(
                    _stream_evidence(evidence[pair], per_source, cells, roles_of)
                    if shows_evidence
                    else ()
                ),
                evidence_at=first_row_of.get(pair),
                plan=_plan_actions(actions),
            )
        )

    counts = summary["counts"]
    entity_rows = summary.get("rows_scanned", {}).get("entities", {})
    stream_rows = summary.get("rows_scanned", {}).get("streams", {})
    estimated = summary.get("rows_scanned", {}).get("estimated") or {}
    entities_estimated = set(estimated.get("entities") or ())
    streams_estimated = set(estimated.get("streams") or ())
    entities = []
    for name, meta in summary.get("entities", {}).items():
        stats = counts.get("by_entity", {}).get(name, {})
        deltas = counts.get("abs_delta", {}).get(name, {})
        columns = []
        for column, cmeta in meta.get("columns", {}).items():
            d = deltas.get(column)
            columns.append(
                ColumnStats(
                    name=column,
                    fold=str(cmeta.get("fold", "")),
                    stream=str(cmeta.get("stream", "")),
                    findings=int(stats.get("by_column", {}).get(column, 0)),
                    abs_delta_total=_number_text(d["sum"]) if d else None,
                    abs_delta_max=_number_text(d["max"]) if d else None,
                )
            )
        entities.append(
            EntityStats(
                name=name,
                table=str(meta.get("table", "")),
                rows=_count(entity_rows.get(name, 0)),
                drifted_rows=int(stats.get("drifted_rows", 0)),
                findings=int(stats.get("total", 0)),
                by_kind={k: int(v) for k, v in stats.get("by_kind", {}).items()},
                columns=tuple(columns),
                rows_estimated=name in entities_estimated,
            )
        )

    by_cause: dict[str, int] = {}
    if has_attribution and table.num_rows:
        for item in pc.value_counts(pc.fill_null(table["cause"], "")).to_pylist():
            by_cause[item["values"] or "(none)"] = int(item["counts"])
        by_cause = dict(
            sorted(
                by_cause.items(),
                key=lambda kv: (CAUSES.index(kv[0]) if kv[0] in CAUSES else 99, kv[0]),
            )
        )

    time_chart, keys_without_time = (
        _time_chart(table, has_attribution) if table.num_rows else (None, 0)
    )
    by_kind = {k: int(v) for k, v in counts.get("by_kind", {}).items()}
    watermarks = tuple(
        {
            "stream": name,
            "order_by": ", ".join(str(o) for o in w.get("order_by", [])),
            "value": "—" if w.get("value") is None else to_json(w.get("value")),
            "rows": "—"
            if w.get("rows") is None
            else ("≈ " if name in streams_estimated else "") + f"{int(w['rows']):,}",
        }
        for name, w in summary.get("watermarks", {}).items()
    )
    kinds_present = [k for k in KINDS if k in by_kind] + [k for k in by_kind if k not in KINDS]
    columns_filter = sorted({r.column for r in rows if r.column})
    command = summary.get("command")
    report = Report(
        database=mask_text(str(summary.get("database", {}).get("url", ""))),
        dialect=str(summary.get("database", {}).get("dialect", "")),
        snapshot_at=_text(summary.get("snapshot", {}).get("taken_at")),
        isolation=_text(summary.get("snapshot", {}).get("isolation")),
        created_at=_text(summary.get("created_at")),
        scope=_text(summary.get("scope")),
        spec_sha256=_text(summary.get("spec", {}).get("sha256")),
        spec_path=_text(summary.get("spec", {}).get("path")),
        version=_text(summary.get("version")),
        watermarks=watermarks,
        plan=plan_info,
        entities_audited=len(summary.get("entities", {})),
        rows_audited=_total(entity_rows.values()),
        stream_rows=_total(stream_rows.values()),
        rows_estimated=bool(entities_estimated),
        stream_rows_estimated=bool(streams_estimated),
        total=table.num_rows,
        drifted_rows=int(counts.get("drifted_rows", 0)),
        by_kind={k: by_kind[k] for k in kinds_present},
        by_cause=by_cause,
        fix_first=_fix_first(summary),
        by_job=_by_job(counts),
        entities=tuple(entities),
        delta_charts=_delta_charts(table),
        time_chart=time_chart,
        keys_without_time=keys_without_time,
        findings=tuple(rows),
        shown=len(rows),
        limit=limit,
        has_attribution=has_attribution,
        has_evidence=bool(evidence),
        columns_filter=tuple(columns_filter),
        command=mask_text(command) if command else None,
        folder_name=folder_name or folder.name,
        script_data={
            "rows": [
                [
                    r.entity,
                    r.column or "",
                    r.kind,
                    r.key,
                    -1 if r.abs_delta is None else r.abs_delta,
                    r.cause or "",
                    r.time or "",
                    r.expected.text,
                    r.actual.text,
                ]
                for r in rows
            ],
            "total": table.num_rows,
        },
    )
    return report


# --------------------------------------------------------------------------- rendering

_ROW_KINDS = set(ROW_KINDS)
_NULL_HTML = '<span class="null">NULL</span>'


# The characters markupsafe.escape replaces; a text without any is its own escape.
_MARKUP_CHARS = re.compile("[&<>'\"]")


def _cell_html(c: Cell) -> str:
    # Plain str, never Markup: "<td>" + Markup(...) would escape the "<td>".
    if c.null:
        return _NULL_HTML
    text = str(escape(c.text)) if _MARKUP_CHARS.search(c.text) else c.text
    if c.full_length > len(c.text):  # Cell.clipped
        return f'{text} <span class="clipped">({c.full_length:,} chars)</span>'
    return text


def cell_html(c: Cell) -> Markup:
    """A value as the report shows it: escaped text, NULL marked, clipping noted."""
    return Markup(_cell_html(c))


def rows_html(rows: Iterable[tuple[Cell, ...]]) -> Markup:
    """Table rows of cells, one ``<tr>`` a line, each value escaped once.

    Evidence panels hold most of the report's cells; building their rows here
    rather than with a template macro per cell is most of the render time saved.
    """
    rows = rows if isinstance(rows, (list, tuple)) else list(rows)
    cells = list(chain.from_iterable(rows))
    texts = list(map(_TEXT, cells))
    if (
        rows
        and all(rows)
        and not any(map(_NULL_FLAG, cells))
        and not any(map(gt, map(_FULL_LENGTH, cells), map(len, texts)))
        and not _MARKUP_CHARS.search("".join(texts))
    ):
        # The usual panel: every cell shows its text as it is (nothing to escape,
        # no NULL, nothing clipped), checked for all cells at once.
        lines = ["</td><td>".join(map(_TEXT, row)) for row in rows]
        return Markup("<tr><td>" + "</td></tr>\n<tr><td>".join(lines) + "</td></tr>\n")
    cell = _cell_html
    lines = ["<tr>" + "".join([f"<td>{cell(c)}</td>" for c in row]) + "</tr>\n" for row in rows]
    return Markup("".join(lines))


_TEXT, _NULL_FLAG, _FULL_LENGTH = itemgetter(0), itemgetter(1), itemgetter(2)  # Cell fields


def head_html(columns: tuple[str, ...], roles: dict[str, str]) -> Markup:
    """The header row of a stream's evidence table, each column's role marked."""
    cells = []
    for c in columns:
        name = str(escape(c))
        if c in roles:
            role = str(escape(roles[c]))
            cells.append(f'<th class="role-{role}">{name} <span class="role">{role}</span></th>')
        else:
            cells.append(f'<th class="role-value">{name}</th>')
    return Markup("<tr>" + "".join(cells) + "</tr>")


def streams_html(
    evidence: Iterable[StreamEvidence],
    head: Any = head_html,
    rows: Any = rows_html,
) -> Markup:
    """The evidence tables of one key, one per stream: a title, the header, the rows."""
    parts = []
    for s in evidence:
        shown = len(s.rows)
        title = f"<h3>{escape(s.source)}: last {escape(shown)} row(s), newest first"
        if s.collected > shown:
            title += (
                f' <span class="clipped">({escape(s.collected)} collected;'
                " all in evidence.parquet)</span>"
            )
        parts.append(
            f'{title}</h3>\n<table class="stream-rows">\n<thead>{head(s.columns, s.roles)}'
            f"</thead>\n<tbody>\n{rows(s.rows)}</tbody>\n</table>\n"
        )
    return Markup("".join(parts))


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document."""
    heads: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], Markup] = {}

    def head(columns: tuple[str, ...], roles: dict[str, str]) -> Markup:
        # Every key of one stream has the same header: made once.
        shape = (columns, tuple(roles.items()))
        html = heads.get(shape)
        if html is None:
            html = heads[shape] = head_html(columns, roles)
        return html

    env = html_environment()
    style = env.get_template("report/style.css.j2").render()
    script = env.get_template("report/script.js.j2").render()
    csp = (
        "default-src 'none'; "
        f"style-src 'sha256-{_sha256_source(style)}'; "
        f"script-src 'sha256-{_sha256_source(script)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return env.get_template("report.html.j2").render(
        report=report,
        style=Markup(style),
        script=Markup(script),
        csp=csp,
        data_json=safe_json(report.script_data),
        row_kinds=_ROW_KINDS,
        cell=cell_html,
        rows=rows_html,
        head=head,
        streams=lambda evidence: streams_html(evidence, head),
        findings_csv=FINDINGS_CSV,
        evidence_keys=EVIDENCE_KEYS,
    )


def render_report(
    folder: str | Path, limit: int = DEFAULT_TOP, folder_name: str | None = None
) -> Path:
    """Render ``report.html`` into an audit folder and return its path.

    ``folder_name`` is the name the report shows (an audit renders in a staging
    folder before it is renamed into place). Also writes ``findings.csv`` when
    the folder has none (older folders).
    """
    folder = Path(folder)
    # The report's ~10^5 small tuples (cells) live until the file is written: with the
    # collector running, its full passes were half of build_report's time at scale M.
    # Memory stays bounded: the report embeds a capped number of findings and rows.
    with collector_paused():
        report = build_report(folder, limit, folder_name)
        if not (folder / FINDINGS_CSV).is_file():
            write_findings_csv(folder)
        html = render_html(report)
        # Freed by reference counting while the collector still sleeps: alive when
        # it wakes, the report's objects would all be walked by its next pass.
        del report
    path = folder / REPORT
    partial = folder / f".{REPORT}.partial"
    try:
        partial.write_text(html, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return path
