"""report.html byte for byte, for two small audit folders with known contents.

``hostile`` puts an attack string in every field the report shows; ``edge`` holds
values at the edges of a cell (clipped text, SQL NULL, exact numbers, nested and
binary values, rows that are not objects, ragged columns, broken roles). Their
golden files were rendered before the report's rendering was rewritten for
speed, so these tests pin that nothing the report says changed.

A template change that is meant to change the HTML regenerates them with
``DRIFT_UPDATE_GOLDEN=1 pytest tests/test_report_golden.py``; review the diff.
A missing golden file fails (it is never written silently).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from audit.report import render_report
from tests.reportdata import edge_folder, hostile_folder

GOLDEN = Path(__file__).resolve().parent / "golden"
FOLDERS = {"hostile": hostile_folder, "edge": edge_folder}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_report_matches_its_golden_file(name, tmp_path):
    folder = FOLDERS[name](tmp_path / name)
    html = render_report(folder).read_bytes()
    golden = GOLDEN / f"report_{name}.html"
    if os.environ.get("DRIFT_UPDATE_GOLDEN") == "1":
        golden.write_bytes(html)
    if not golden.is_file():
        pytest.fail(f"{golden} is missing; DRIFT_UPDATE_GOLDEN=1 writes it (review it first)")
    expected = golden.read_bytes()
    if html != expected:
        diff = difflib.unified_diff(
            expected.decode("utf-8").splitlines(),
            html.decode("utf-8").splitlines(),
            "golden",
            "rendered",
            lineterm="",
            n=1,
        )
        pytest.fail("report.html differs from its golden file:\n" + "\n".join(list(diff)[:60]))
