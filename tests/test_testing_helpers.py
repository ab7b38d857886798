"""The concurrent-test helpers, run exactly as an application team would run them.

docs/examples/concurrency holds the example from the docs: the racy ship_stock
job's test must fail and show the drifted row; the fixed job's test must pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYSQL_URL, POSTGRES_URL, require_server

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "concurrency"


def run_example(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            str(folder),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_example_racy_job_fails_and_fixed_job_passes(tmp_path, engine):
    options: list[str] = []
    if engine != "sqlite":
        require_server(engine)
        options = ["--drift-db", POSTGRES_URL if engine == "postgresql" else MYSQL_URL]
    proc = run_example(tmp_path, *options)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 failed, 1 passed" in out
    assert "FAILED test_ship_stock.py::test_racy_ship_stock_loses_updates" in out
    assert 'inventory ["SKU-1"] .on_hand: mismatch, expected 900, actual ' in out
    # The spec has the job log: the failure names the racing runs.
    assert "overlapping runs: #" in out and " ship_stock attempt 1 on w" in out


def test_run_concurrently_reports_worker_errors(tmp_path):
    from drift.testing import run_concurrently

    with pytest.raises(RuntimeError, match="a concurrent job failed") as info:
        run_concurrently(_explode, "sqlite://", workers=2, iterations=3)
    assert "ZeroDivisionError" in str(info.value)
    run = run_concurrently(_explode, "sqlite://", workers=2, iterations=3, raise_errors=False)
    assert run.completed == 2 * 1 and len(run.errors) == 2  # iteration 0 succeeds, then boom


def _explode(url: str, worker: int, iteration: int) -> None:
    if iteration == 1:
        1 / 0  # noqa: B018


def test_failure_message_shows_the_race_evidence():
    from drift.testing import describe

    summary = {"counts": {"total": 1, "drifted_rows": 1}}
    row = {
        "entity": "inventory",
        "key": '["SKU-1"]',
        "column": "on_hand",
        "kind": "mismatch",
        "expected": "8",
        "actual": "9",
        "delta": -1.0,
        "cause": "lost_update",
        "evidence": '{"why": "two runs overlapped", "overlapping_runs": [[3, 4]], '
        '"retried_runs": [], "runs": [{"id": 3, "job": "ship_stock", '
        '"worker": "w1", "attempt": 1, "started_at": "t1", "finished_at": "t3"},'
        ' {"id": 4, "job": "ship_stock", "worker": "w2", "attempt": 1, '
        '"started_at": "t2", "finished_at": "t4"}]}',
    }
    text = describe(summary, [row])
    assert text.splitlines() == [
        "drift found 1 finding(s) in 1 drifted row(s):",
        '  inventory ["SKU-1"] .on_hand: mismatch, expected 8, actual 9 (delta -1)',
        "    cause: lost_update",
        "    why: two runs overlapped",
        "    overlapping runs: #3 ship_stock attempt 1 on w1 [t1 .. t3] and "
        "#4 ship_stock attempt 1 on w2 [t2 .. t4]",
    ]
