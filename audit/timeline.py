"""Report data for attribution: causes, jobs, and a timeline of runs per key.

Built from the audit folder's findings (the ``cause`` and ``evidence``
columns), so ``drift report`` re-renders it without a database. Each timeline
places a key's runs on one time axis as percentages, for the report to draw.
"""

from __future__ import annotations

import json
from typing import Any

from audit.attribution import instant

MAX_TIMELINES = 50


def attribution_view(findings: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """What the report's attribution section shows."""
    counts = summary.get("counts", {})
    timelines = []
    for finding in findings:
        if finding.get("evidence") is None or len(timelines) >= MAX_TIMELINES:
            continue
        evidence = json.loads(finding["evidence"])
        pairs = evidence.get("overlapping_runs") or []
        retried = [i for pair in evidence.get("retries") or [] for i in pair if i is not None]
        retried = retried or evidence.get("retried_runs") or []
        if not pairs and not retried:
            continue
        timelines.append(_timeline(finding, evidence, pairs, retried))
    return {
        "by_cause": counts.get("by_cause", {}),
        "by_job": counts.get("by_job", {}),
        "fix_first": summary.get("fix_first"),
        "timelines": timelines,
    }


def _timeline(finding: dict[str, Any], evidence: dict[str, Any], pairs, retried) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    involved = {str(i) for pair in pairs for i in pair} | {str(i) for i in retried}
    lost = {str(i) for i in evidence.get("lost_runs", [])}
    runs = [r for r in evidence.get("runs", []) if str(r["id"]) in involved]
    times = [instant(r["started_at"]) for r in runs] + [instant(r["finished_at"]) for r in runs]
    known = [t for t in times if t is not None]
    lo, hi = (min(known), max(known)) if known else (None, None)
    span = (hi - lo).total_seconds() if lo is not None and hi is not None else 0.0
    bars = []
    for run in runs:
        start, finish = instant(run["started_at"]), instant(run["finished_at"])
        left = ((start - lo).total_seconds() / span * 100) if span and start and lo else 0.0
        right = ((finish - lo).total_seconds() / span * 100) if span and finish and lo else 100.0
        bars.append(
            {
                "run": run,
                "left": round(left, 2),
                "width": round(max(right - left, 0.5), 2),
                "open": finish is None,
                "lost": str(run["id"]) in lost,
                "retry": str(run["id"]) in {str(i) for i in evidence.get("retried_runs") or []},
            }
        )
    return {
        "entity": finding["entity"],
        "key": finding["key"],
        "column": finding.get("column"),
        "cause": finding.get("cause"),
        "confidence": evidence.get("confidence"),
        "why": evidence.get("why"),
        "first_divergence_at": evidence.get("first_divergence_at"),
        "pairs": pairs,
        "bars": bars,
    }
