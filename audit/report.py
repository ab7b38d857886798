"""Report data and its HTML rendering.

The report is built from the audit folder alone (summary.json and
findings.parquet), so ``drift report AUDIT_DIR`` re-renders it without a
database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from audit.errors import OutputError
from audit.findings import ROW_KINDS
from audit.output import FINDINGS, REPORT, read_summary
from audit.templating import html_environment
from audit.timeline import attribution_view

DEFAULT_TOP = 2000


def top_findings(folder: Path, limit: int = DEFAULT_TOP) -> tuple[list[dict[str, Any]], int]:
    """The findings a reviewer sees first: row-level kinds, then by |delta|."""
    table = pq.read_table(str(folder / FINDINGS))
    total = table.num_rows
    if total == 0:
        return [], 0
    row_level = pc.is_in(table["kind"], value_set=__import__("pyarrow").array(ROW_KINDS))
    table = table.append_column("_row_level", pc.cast(row_level, "int8"))
    table = table.append_column("_abs", pc.fill_null(pc.abs(table["delta"]), -1.0))
    table = table.sort_by(
        [
            ("_row_level", "descending"),
            ("_abs", "descending"),
            ("entity", "ascending"),
            ("key", "ascending"),
        ]
    )
    table = table.slice(0, limit).drop_columns(["_row_level", "_abs"])
    return table.to_pylist(), total


def render_report(folder: str | Path, limit: int = DEFAULT_TOP) -> Path:
    """Render ``report.html`` into an audit folder and return its path."""
    folder = Path(folder)
    summary = read_summary(folder)
    findings, total = top_findings(folder, limit)
    html = (
        html_environment()
        .get_template("report.html.j2")
        .render(
            summary=summary,
            findings=findings,
            total=total,
            shown=len(findings),
            attribution=attribution_view(findings, summary),
        )
    )
    path = folder / REPORT
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return path
