"""Which findings a reviewer sees first.

The report embeds the top N findings and the audit collects stream evidence for
the same keys, so both must agree on one order: row-level kinds (missing,
orphan, duplicate, null key) first, then the largest absolute delta, then
entity, key and column for a stable tie-break.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audit.findings import ROW_KINDS

RANK_COLUMNS = ("entity", "key", "column", "kind", "delta")


def top_indices(table: pa.Table, limit: int) -> pa.Array:
    """Row indices of the ``limit`` first findings of ``table``, best first.

    ``table`` needs at least the columns of :data:`RANK_COLUMNS`. Uses a
    top-k selection, so a million findings do not need a full sort.
    """
    if limit <= 0 or table.num_rows == 0:
        return pa.array([], type=pa.uint64())
    order = pa.table(
        {
            "row_level": pc.cast(pc.is_in(table["kind"], value_set=pa.array(ROW_KINDS)), pa.int8()),
            "abs_delta": pc.fill_null(pc.abs(table["delta"]), -1.0),
            "entity": table["entity"],
            "key": table["key"],
            "column": pc.fill_null(table["column"], ""),
            "position": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        }
    )
    keys = [
        ("row_level", "descending"),
        ("abs_delta", "descending"),
        ("entity", "ascending"),
        ("key", "ascending"),
        ("column", "ascending"),
        ("position", "ascending"),
    ]
    if limit >= table.num_rows:
        return pc.sort_indices(order, sort_keys=keys)
    return pc.select_k_unstable(order, k=limit, sort_keys=keys)
