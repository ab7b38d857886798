"""``findings.csv``: every finding of an audit, for spreadsheets and ``grep``.

Written beside ``findings.parquet`` when the audit folder is written (and by
``drift report`` when missing), streamed batch by batch with pyarrow, so a
million findings never sit in memory at once. The columns are those of
findings.parquet; values stay the exact JSON text of the Parquet file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from audit.errors import OutputError

FINDINGS_CSV = "findings.csv"


def write_findings_csv(folder: str | Path, batch_size: int = 50_000) -> Path:
    """Write ``findings.csv`` from the folder's findings.parquet; returns its path.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    folder = Path(folder)
    source = pq.ParquetFile(str(folder / "findings.parquet"))
    path = folder / FINDINGS_CSV
    partial = folder / f".{FINDINGS_CSV}.partial"
    try:
        with pcsv.CSVWriter(str(partial), source.schema_arrow) as writer:
            for batch in source.iter_batches(batch_size=batch_size):
                writer.write_batch(batch)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return path
