"""Stream-row evidence: the facts behind each drifted key the report shows.

Inside the audit's snapshot, after the diff, drift fetches for every drifted
key among the first :data:`EVIDENCE_KEYS` findings (the report's order, see
:mod:`audit.ranking`) the last :data:`ROWS_PER_KEY` rows of each stream that
feeds the key's entity, and writes them to ``evidence.parquet``:

=========  ===============================================================
entity     the entity of the finding
key        the key, the same JSON array text as in findings.parquet
source     ``stream:<name>``
position   0 for the newest row (``order_by`` descending), then 1, 2...
at         the stream row's ``time`` value (ISO text), when the stream has one
row        every column of the stream row, a JSON object (exact encoding)
roles      JSON: which spec expressions are the stream's key/order_by/time
=========  ===============================================================

Keys are fetched in batches with :func:`audit.rebuild.key_filter_clause`, one
windowed query per stream and batch (never one query per key), and written
batch by batch, so memory follows the capped number of keys, not the tables.
Evidence rows are matched back to findings by the JSON text of the stream's
key values; keys whose type does not round-trip through JSON identically (a
float stream key for an integer entity key, say) get no evidence.
"""

from __future__ import annotations

import json
import operator
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit.collation import match_keys
from audit.dialects import Dialect, get_dialect
from audit.findings import from_json, iso, key_to_json, to_json
from audit.output import read_parquet
from audit.ranking import RANK_COLUMNS, top_indices
from audit.rebuild import key_filter_clause
from audit.schema import BoundSpec, BoundStream

EVIDENCE = "evidence.parquet"
EVIDENCE_KEYS = 2000
ROWS_PER_KEY = 20
BATCH_KEYS = 500

EVIDENCE_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("position", pa.int32()),
        ("at", pa.string()),
        ("row", pa.string()),
        ("roles", pa.string()),
    ]
)


def drifted_keys(findings_path: Path, limit: int = EVIDENCE_KEYS) -> dict[str, list[str]]:
    """The distinct keys (JSON text) of the first ``limit`` findings, by entity.

    Null keys are left out: they name no entity row and no stream rows.
    """
    table = read_parquet(findings_path, columns=list(RANK_COLUMNS))
    top = table.take(top_indices(table, limit))
    keys: dict[str, dict[str, None]] = defaultdict(dict)
    for entity, key in zip(top["entity"].to_pylist(), top["key"].to_pylist()):
        values = from_json(key)
        if isinstance(values, list) and values and all(v is not None for v in values):
            keys[entity][key] = None
    return {entity: list(found) for entity, found in keys.items()}


def collect_evidence(
    conn: Connection,
    bound: BoundSpec,
    folder: Path,
    *,
    keys_limit: int = EVIDENCE_KEYS,
    rows_per_key: int = ROWS_PER_KEY,
    batch_keys: int = BATCH_KEYS,
) -> int:
    """Write ``evidence.parquet`` into ``folder`` and return its row count.

    Reads ``findings.parquet`` from the same folder; runs on ``conn`` (the
    audit's snapshot), so the evidence is what the diff saw.
    """
    wanted = drifted_keys(folder / "findings.parquet", keys_limit)
    writer = pq.ParquetWriter(str(folder / EVIDENCE), EVIDENCE_SCHEMA, compression="zstd")
    total = 0
    try:
        for entity_name, keys in wanted.items():
            entity = bound.entities.get(entity_name)
            if entity is None:
                continue
            for stream_name in entity.spec.streams:
                stream = bound.stream_for(entity, stream_name)
                for start in range(0, len(keys), batch_keys):
                    batch = keys[start : start + batch_keys]
                    rows = list(_stream_rows(conn, stream, entity_name, batch, rows_per_key))
                    if rows:
                        writer.write_table(pa.Table.from_pylist(rows, schema=EVIDENCE_SCHEMA))
                        total += len(rows)
    finally:
        writer.close()
    return total


def _label(table: sa.Table, base: str) -> str:
    """A result label that no column of the table already uses."""
    label = base
    while label in table.c:
        label = "_" + label
    return label


def _exactly(dialect: Dialect, column: sa.Column) -> Any:
    read = dialect.exactly(column)
    return column if read is column else read.label(column.name)


def _stream_rows(
    conn: Connection, stream: BoundStream, entity: str, keys: list[str], rows_per_key: int
) -> Iterator[dict[str, Any]]:
    wanted = set(keys)
    values = [tuple(from_json(k)) for k in keys]
    table = stream.table
    key_labels = [_label(table, f"drift_key{i}") for i in range(len(stream.key))]
    position = _label(table, "drift_position")
    at = _label(table, "drift_at")
    joined: sa.FromClause = table
    partition: list[Any] = list(stream.key)
    if stream.key_collations is not None:
        # Grouped under the entity key's collation, a key's rows may be spelled otherwise
        # than the finding's key: each row is matched to the key it belongs to.
        joined, which = match_keys(table, stream.key, values, key_labels[0])
        partition = [which]
    window = sa.func.row_number().over(
        partition_by=partition, order_by=[o.desc() for o in stream.order_by]
    )
    # Single-precision values read exactly (a MariaDB FLOAT is read rounded otherwise).
    dialect = get_dialect(conn.dialect.name)
    columns = [_exactly(dialect, c) for c in table.c]
    if stream.key_collations is not None:
        key_labels = key_labels[:1]
        selected = [*columns, partition[0].label(key_labels[0])]
    else:
        selected = [*columns]
        selected += [dialect.exactly(k).label(lbl) for k, lbl in zip(stream.key, key_labels)]
    selected.append(window.label(position))
    if stream.time is not None:
        selected.append(stream.time.label(at))
    rows = sa.select(*selected).select_from(joined)
    if stream.key_collations is None:
        rows = rows.where(key_filter_clause(stream.key, values))
    inner = rows.subquery("evidence")
    query = (
        sa.select(inner)
        .where(inner.c[position] <= rows_per_key)
        .order_by(*(inner.c[lbl] for lbl in key_labels), inner.c[position])
    )
    roles = json.dumps(
        {
            "key": list(stream.spec.key),
            "order_by": list(stream.spec.order_by),
            "time": stream.spec.time,
        },
        ensure_ascii=False,
    )
    source = f"stream:{stream.spec.name}"
    # Positions in the result row: the table's columns first, then the labels.
    width = len(table.c)
    key_at = range(width, width + len(key_labels))
    position_at = width + len(key_labels)
    # The JSON object of a row, as to_json({name: value, ...}) writes it, with
    # each column name encoded once rather than once per row.
    prefixes = [to_json(c.name) + ":" for c in table.c]
    for record in conn.execute(query):
        if stream.key_collations is not None:
            key = keys[record[key_at[0]]]
        else:
            key = key_to_json([record[i] for i in key_at])
        if key not in wanted:
            continue
        yield {
            "entity": entity,
            "key": key,
            "source": source,
            "position": int(record[position_at]) - 1,
            "at": iso(record[position_at + 1]) if stream.time is not None else None,
            "row": "{" + ",".join([p + to_json(v) for p, v in zip(prefixes, record[:width])]) + "}",
            "roles": roles,
        }


class EvidenceRow(NamedTuple):
    """One row of evidence.parquet, as the report reads it."""

    source: str
    position: int
    row: str | None  # the stream row, a JSON object
    roles: str | None


def read_evidence(
    folder: Path, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], list[EvidenceRow]]:
    """Evidence rows for some (entity, key) pairs, grouped, sorted by source, newest first."""
    path = folder / EVIDENCE
    if not path.is_file() or not keys:
        return {}
    table = read_parquet(path, columns=["entity", "key", "source", "position", "row", "roles"])
    wanted = pa.array(sorted({k for _, k in keys}), type=pa.string())
    table = table.filter(pc.is_in(table["key"], value_set=wanted))
    found: dict[tuple[str, str], list[EvidenceRow]] = {}
    entities, key_texts = table["entity"].to_pylist(), table["key"].to_pylist()
    details = zip(*[table[name].to_pylist() for name in ("source", "position", "row", "roles")])
    make = EvidenceRow._make
    for entity, key, detail in zip(entities, key_texts, details):
        pair = (entity, key)
        rows = found.get(pair)
        if rows is None:
            if pair not in keys:
                continue
            rows = found[pair] = []
        rows.append(make(detail))
    for rows in found.values():
        rows.sort(key=_SOURCE_POSITION)
    return found


_SOURCE_POSITION = operator.itemgetter(0, 1)  # EvidenceRow (source, position)
