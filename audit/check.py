"""Drift alerts: an audit judged against thresholds, for cron and Prometheus.

``drift check`` runs the same audit as ``drift audit`` (by default into a
temporary folder that is removed afterwards), then says whether a threshold was
crossed. Renderings: a line of text, JSON, or the Prometheus text format for the
node exporter's textfile collector.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import DriftError
from audit.findings import KINDS, read_findings
from audit.run import AuditResult, Progress, run_audit
from audit.spec import Spec, load_spec


@dataclass(frozen=True)
class Thresholds:
    """Drift tolerated before a check fails: more drifted rows, or more total |delta|."""

    max_rows: int = 0
    max_abs_delta: float | None = None


@dataclass(frozen=True)
class CheckResult:
    summary: dict[str, Any]
    thresholds: Thresholds
    reasons: tuple[str, ...]
    finished_at: float
    series: tuple[tuple[str, str, str, int], ...]  # (entity, column, kind, findings)
    out_dir: Path | None

    @property
    def crossed(self) -> bool:
        return bool(self.reasons)

    @property
    def drifted_rows(self) -> int:
        return int(self.summary["counts"]["drifted_rows"])

    @property
    def abs_delta_sum(self) -> float:
        return abs_delta_sum(self.summary)


def abs_delta_sum(summary: dict[str, Any]) -> float:
    """Sum of |expected - actual| over every numeric finding of an audit."""
    return sum(
        stats["sum"]
        for columns in summary["counts"].get("abs_delta", {}).values()
        for stats in columns.values()
    )


def run_check(
    spec: Spec | str | Path,
    db: str | None = None,
    thresholds: Thresholds = Thresholds(),
    *,
    out: str | Path | None = None,
    progress: Progress | None = None,
    audit_options: Mapping[str, Any] | None = None,
) -> CheckResult:
    """Audit, then judge the result against the thresholds.

    With ``out`` the audit folder is kept there; otherwise it is written to a
    temporary folder and removed. ``audit_options`` are passed to
    :func:`audit.run.run_audit` (e.g. incremental options).
    """
    scratch = None
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="drift-check-"))
        target: Path = scratch / "audit"
    else:
        target = Path(out)
    try:
        result = run_audit(
            spec,
            db=db,
            out=target,
            progress=progress,
            # A folder nobody reads needs the findings only (no evidence, plan or report).
            findings_only=scratch is not None,
            **dict(audit_options or {}),
        )
        series = _series(result)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return judge(result, thresholds, series, None if scratch is not None else result.out_dir)


@dataclass(frozen=True)
class Tick:
    """One check of :func:`watch`: its result, or the error that stopped it."""

    number: int  # 1, 2, ...
    started_at: float  # Unix time
    seconds: float  # wall time of the whole check
    result: CheckResult | None
    error: DriftError | None
    skipped: int = 0  # scheduled checks skipped before this one (the previous overran)


def watch(
    spec: Spec | str | Path,
    db: str | None = None,
    thresholds: Thresholds = Thresholds(),
    *,
    every: float,
    count: int | None = None,
    progress: Progress | None = None,
    audit_options: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Tick]:
    """Check every ``every`` seconds, ``count`` times or until the caller stops.

    Checks start at a fixed rate (0, every, 2 x every, ... after the first); one
    that runs past the next start time makes the loop skip the starts it missed
    rather than run late checks back to back. A check that fails with a
    :class:`~audit.errors.DriftError` (a database that is down, say) is yielded
    as such and the next one runs as scheduled. The spec is read once; one
    process pays Python's and the libraries' start-up once, so each incremental
    check costs only its own queries (docs/benchmarks.md).
    """
    if every <= 0 or not math.isfinite(every):
        raise DriftError(f"the interval between checks must be positive (got {every})")
    if count is not None and count < 1:
        raise DriftError(f"the number of checks must be at least 1 (got {count})")
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    due = clock()
    skipped = number = 0
    while True:
        number += 1
        started, wall = clock(), time.time()
        result: CheckResult | None = None
        error: DriftError | None = None
        try:
            result = run_check(spec, db, thresholds, progress=progress, audit_options=audit_options)
        except DriftError as err:
            error = err
        yield Tick(number, wall, clock() - started, result, error, skipped)
        if count is not None and number >= count:
            return
        due += every
        now = clock()
        skipped = max(0, math.ceil((now - due) / every))
        due += skipped * every
        if due > now:
            sleep(due - now)


def _series(result: AuditResult) -> tuple[tuple[str, str, str, int], ...]:
    counts: dict[tuple[str, str, str], int] = {}
    for row in read_findings(result.findings_path):
        label = (row["entity"], row["column"] or "", row["kind"])
        counts[label] = counts.get(label, 0) + 1
    return tuple((e, c, k, n) for (e, c, k), n in sorted(counts.items()))


def judge(
    result: AuditResult,
    thresholds: Thresholds,
    series: tuple[tuple[str, str, str, int], ...],
    out_dir: Path | None,
) -> CheckResult:
    summary = result.summary
    reasons = []
    rows = int(summary["counts"]["drifted_rows"])
    if rows > thresholds.max_rows:
        reasons.append(f"{rows} drifted row(s) > --max-rows {thresholds.max_rows}")
    total = abs_delta_sum(summary)
    if thresholds.max_abs_delta is not None and total > thresholds.max_abs_delta:
        reasons.append(f"total |delta| {total:g} > --max-abs-delta {thresholds.max_abs_delta:g}")
    return CheckResult(summary, thresholds, tuple(reasons), time.time(), series, out_dir)


# --------------------------------------------------------------------------- renderings


def render_text(check: CheckResult) -> str:
    counts = check.summary["counts"]
    state = "ALERT" if check.crossed else "OK"
    kinds = ", ".join(f"{k} {v}" for k, v in counts["by_kind"].items()) or "no findings"
    line = f"drift check {state}: {check.drifted_rows} drifted row(s) ({kinds})"
    if check.reasons:
        line += "; " + "; ".join(check.reasons)
    return line


def render_json(check: CheckResult) -> str:
    return json.dumps(
        {
            "crossed": check.crossed,
            "reasons": list(check.reasons),
            "drifted_rows": check.drifted_rows,
            "abs_delta_sum": check.abs_delta_sum,
            "thresholds": {
                "max_rows": check.thresholds.max_rows,
                "max_abs_delta": check.thresholds.max_abs_delta,
            },
            "counts": check.summary["counts"],
            "findings": [
                {"entity": e, "column": c or None, "kind": k, "findings": n}
                for e, c, k, n in check.series
            ],
            "duration_seconds": check.summary["timings"]["total"],
            "audit_folder": str(check.out_dir) if check.out_dir else None,
        },
        indent=2,
        ensure_ascii=False,
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prometheus(check: CheckResult) -> str:
    """The Prometheus text exposition format (node exporter textfile collector)."""
    lines = [
        "# HELP drift_findings Findings of the last drift check, by entity, column and kind.",
        "# TYPE drift_findings gauge",
    ]
    seen = set()
    for entity, column, kind, n in check.series:
        seen.add((entity, column, kind))
        lines.append(
            f'drift_findings{{entity="{_label(entity)}",column="{_label(column)}",'
            f'kind="{_label(kind)}"}} {n}'
        )
    # Zero series for every audited entity, so an alert can see the drift go away.
    for entity, stats in check.summary.get("entities", {}).items():
        for column in stats.get("columns", {}):
            if (entity, column, "mismatch") not in seen:
                lines.append(
                    f'drift_findings{{entity="{_label(entity)}",column="{_label(column)}",'
                    f'kind="mismatch"}} 0'
                )
        for kind in KINDS[1:]:
            if (entity, "", kind) not in seen:
                lines.append(
                    f'drift_findings{{entity="{_label(entity)}",column="",kind="{kind}"}} 0'
                )
    lines += [
        "# HELP drift_drifted_rows Drifted rows found by the last drift check.",
        "# TYPE drift_drifted_rows gauge",
        f"drift_drifted_rows {check.drifted_rows}",
        "# HELP drift_abs_delta_sum Sum of |expected - actual| over numeric findings.",
        "# TYPE drift_abs_delta_sum gauge",
        f"drift_abs_delta_sum {check.abs_delta_sum:g}",
        "# HELP drift_threshold_crossed 1 when the last check crossed a threshold.",
        "# TYPE drift_threshold_crossed gauge",
        f"drift_threshold_crossed {int(check.crossed)}",
        "# HELP drift_audit_duration_seconds Wall time of the last drift check's audit.",
        "# TYPE drift_audit_duration_seconds gauge",
        f"drift_audit_duration_seconds {check.summary['timings']['total']:g}",
        "# HELP drift_last_success_timestamp Unix time of the last check that completed.",
        "# TYPE drift_last_success_timestamp gauge",
        f"drift_last_success_timestamp {check.finished_at:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: str | Path, text: str) -> None:
    """Write atomically, as the textfile collector requires (temp file + rename)."""
    from audit.errors import OutputError

    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with open(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            Path(name).replace(path)
        except BaseException:  # a failed or interrupted write leaves no temp file behind
            Path(name).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
