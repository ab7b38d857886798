"""Bookkeeping for reliability scenarios (docs/reliability.md).

A scenario test is marked ``@pytest.mark.scenario("name")`` and may take the
``scenario_runs`` fixture to count what it exercised (seeds, kill points,
examples) and note details. Nothing is written unless
``DRIFT_RELIABILITY_RECORD`` names a folder: then each test appends one JSON
line (scenario, engine, runs, notes, outcome) to a file per process, which
``tests/reliability_report.py`` turns into docs/reliability.md. The suite never
depends on the report script.

``DRIFT_RELIABILITY_RUNS`` multiplies the number of runs of scenarios that loop
(seeds, kill points); the default keeps the suite's runtime bounded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RECORD_ENV = "DRIFT_RELIABILITY_RECORD"
SCALE_ENV = "DRIFT_RELIABILITY_RUNS"
ENGINE_PARAMS = ("backend", "server_backend", "server", "engine")
RUNS_KEY = pytest.StashKey["ScenarioRuns"]()


def scaled(n: int) -> int:
    """``n`` runs, times DRIFT_RELIABILITY_RUNS (default 1)."""
    return n * max(1, int(os.environ.get(SCALE_ENV, "1") or 1))


@dataclass
class ScenarioRuns:
    """What one scenario test exercised."""

    runs: int = 0
    notes: list[str] = field(default_factory=list)

    def run(self, note: str | None = None) -> None:
        """One more run (a seed, a kill point, an example); an optional detail."""
        self.runs += 1
        if note:
            self.notes.append(note)


def engine_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("scenario")
    if marker is not None and "engine" in marker.kwargs:
        return str(marker.kwargs["engine"])
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    for name in ENGINE_PARAMS:
        if name in params:
            return str(params[name])
    for name in ("sqlite_backend",):
        if name in getattr(item, "fixturenames", ()):
            return "sqlite"
    return "any"


def record(item: pytest.Item, outcome: str) -> None:
    """Append this test's scenario record (only when DRIFT_RELIABILITY_RECORD is set)."""
    folder = os.environ.get(RECORD_ENV)
    marker = item.get_closest_marker("scenario")
    if not folder or marker is None:
        return
    runs = item.stash.get(RUNS_KEY, None)
    line = {
        "scenario": marker.args[0],
        "engine": engine_of(item),
        "test": item.nodeid,
        "runs": max(1, runs.runs) if runs is not None else 1,
        "notes": runs.notes if runs is not None else [],
        "outcome": outcome,
    }
    path = Path(folder) / f"records-{os.getpid()}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
