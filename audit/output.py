"""The audit folder, written atomically.

Everything is written into a hidden staging folder beside the target and
renamed into place at the end, so a failed or interrupted audit never leaves a
half-written folder that could later be planned, approved or applied.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

from audit.errors import AuditFolderError, OutputError

SUMMARY = "summary.json"
SPEC_COPY = "drift.toml"
FINDINGS = "findings.parquet"
REPORT = "report.html"


def default_out_dir() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"drift-audit-{stamp}")


@dataclass
class AuditFolder:
    path: Path
    staging: Path

    @classmethod
    def create(cls, out: str | Path | None) -> AuditFolder:
        path = Path(out) if out is not None else default_out_dir()
        path = path.absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OutputError(
                f"output folder {path} already exists and is not empty; choose another --out"
            )
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=parent))
        except OSError as exc:
            raise OutputError(
                f"cannot write the audit folder in {parent}: {exc.strerror}"
            ) from None
        return cls(path=path, staging=staging)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.staging / SUMMARY, summary)

    def write_spec(self, text: str) -> None:
        """A copy of the spec the audit used, so the folder is self-describing."""
        try:
            (self.staging / SPEC_COPY).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write the spec copy: {exc.strerror}") from None

    def commit(self) -> None:
        try:
            if self.path.exists():
                self.path.rmdir()  # empty, checked at creation
            os.replace(self.staging, self.path)
        except OSError as exc:
            self.abandon()
            raise OutputError(
                f"cannot write the audit folder {self.path}: {exc.strerror}"
            ) from None

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    try:
        path.write_text(
            json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The summary of an audit folder, with clear errors for a broken folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditFolderError(f"audit folder not found: {folder}")
    path = folder / SUMMARY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditFolderError(f"{folder} is not an audit folder: {SUMMARY} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditFolderError(f"{path} is unreadable or truncated: {exc}") from None
    if not isinstance(data, dict) or data.get("tool") != "drift" or "counts" not in data:
        raise AuditFolderError(f"{path} is not a drift audit summary")
    if not (folder / FINDINGS).is_file():
        raise AuditFolderError(f"{folder} is incomplete: {FINDINGS} is missing")
    return data


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file of an audit folder as a table.

    ``pq.read_table`` would go through ``pyarrow.dataset``, whose import loads
    pandas (about 0.2 s); a single file needs none of that.
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(str(path)) as parquet:
        return parquet.read(columns=columns)
