"""What a plan needs to know about its target database, captured at audit time.

``target.json`` in the audit folder holds the target's fingerprint (dialect,
database name, a hash of every audited table's reflected schema), the columns
of each entity table (so a missing row can be judged insertable offline) and
the full observed rows of orphan findings (so a DELETE can be guarded by the
whole row and rolled back). ``drift apply`` recomputes the fingerprint from the
live target and refuses a different one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from audit.dialects import get_dialect
from audit.errors import AuditFolderError, OutputError
from audit.findings import ORPHAN_ROW, from_json, read_findings, to_json
from audit.rebuild import key_filter_clause
from audit.schema import BoundSpec

TARGET = "target.json"

# Type families a plan can render as SQL literals; anything else is manual.
FAMILIES = ("integer", "numeric", "float", "string", "boolean", "datetime", "date", "time")


def type_family(type_: sa.types.TypeEngine) -> str:
    """The family of a reflected column type ("other" when a plan cannot render it)."""
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer):
        return "integer"
    if isinstance(type_, sa.Float):
        return "float"
    if isinstance(type_, sa.Numeric):
        return "numeric"
    if isinstance(type_, sa.String):
        return "string"
    if isinstance(type_, sa.DateTime):
        return "datetime"
    if isinstance(type_, sa.Date):
        return "date"
    if isinstance(type_, sa.Time):
        return "time"
    return "other"


def _type_text(conn: Connection, type_: sa.types.TypeEngine) -> str:
    try:
        return str(type_.compile(dialect=conn.dialect))
    except Exception:  # noqa: BLE001 - an exotic type still has a repr
        return repr(type_)


def describe_table(conn: Connection, table: sa.Table) -> dict[str, Any]:
    """Columns of a reflected table: name, type, family, nullable, default."""
    return {
        "name": table.name,
        "schema": table.schema,
        "primary_key": [c.name for c in table.primary_key.columns]
        if table.primary_key is not None
        else [],
        "columns": [
            {
                "name": c.name,
                "type": _type_text(conn, c.type),
                "family": type_family(c.type),
                "nullable": bool(c.nullable),
                "has_default": c.server_default is not None
                or c.autoincrement is True
                or c.identity is not None,
            }
            for c in table.columns
        ],
    }


def database_name(conn: Connection, url: URL) -> str:
    """The database (and schema) the connection works in."""
    name = conn.dialect.name
    if name == "postgresql":
        db, schema = conn.exec_driver_sql("SELECT current_database(), current_schema()").one()
        return f"{db}/{schema}"
    if name == "mysql":
        return str(conn.exec_driver_sql("SELECT DATABASE()").scalar_one())
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        return str(Path(database).resolve())
    return database


def fingerprint(conn: Connection, bound: BoundSpec, url: URL) -> dict[str, Any]:
    """Dialect, database name and a hash of every audited table's schema."""
    tables: dict[str, Any] = {}
    for stream in bound.streams.values():
        tables[_qualified(stream.table)] = describe_table(conn, stream.table)
    for entity in bound.entities.values():
        tables[_qualified(entity.table)] = describe_table(conn, entity.table)
    canonical = json.dumps(
        [tables[name] for name in sorted(tables)], sort_keys=True, separators=(",", ":")
    )
    return {
        "dialect": conn.dialect.name,
        "database": database_name(conn, url),
        "schema_sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        "tables": sorted(tables),
    }


def _qualified(table: sa.Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


def capture_target(conn: Connection, bound: BoundSpec, url: URL, folder: Path) -> None:
    """Write ``target.json`` into an audit folder (called inside the audit's snapshot).

    Reads the findings already written to ``folder`` to fetch the full current
    row of every orphan finding.
    """
    entities: dict[str, Any] = {}
    orphans: dict[str, dict[str, Any]] = {}
    for name, entity in bound.entities.items():
        entities[name] = describe_table(conn, entity.table) | {
            "key": [k.name if isinstance(k, sa.Column) else None for k in entity.key],
            "key_is_unique": entity.key_is_unique,
        }
    wanted: dict[str, list[str]] = {}
    dialect = get_dialect(conn.dialect.name)
    findings = folder / "findings.parquet"
    if findings.is_file():
        for finding in read_findings(findings):
            if finding["kind"] == ORPHAN_ROW:
                wanted.setdefault(finding["entity"], []).append(finding["key"])
    for name, keys in wanted.items():
        entity = bound.entities[name]
        if entity.key_columns is None:
            continue
        found: dict[str, Any] = {}
        # Read exactly: the delete's guard compares each value (a MariaDB FLOAT reads
        # rounded to 6 digits otherwise, and never matches).
        columns = [dialect.exactly(c).label(c.name) for c in entity.table.columns]
        for start in range(0, len(keys), 1000):
            chunk = [tuple(from_json(k)) for k in keys[start : start + 1000]]
            query = sa.select(*columns).where(key_filter_clause(entity.key, chunk))
            for row in conn.execute(query):
                values = dict(row._mapping)
                key = "[" + ",".join(to_json(values[c.name]) for c in entity.key_columns) + "]"
                found.setdefault(key, []).append(values)
        orphans[name] = {k: rows[0] for k, rows in found.items() if len(rows) == 1}
    data = {
        "fingerprint": fingerprint(conn, bound, url),
        "entities": entities,
        "orphans": orphans,
    }
    try:
        (folder / TARGET).write_text(to_json(data) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {TARGET}: {exc.strerror}") from None


def read_target(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / TARGET
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_float=_decimal)
    except FileNotFoundError:
        raise AuditFolderError(
            f"{audit_dir} has no {TARGET}: it was written by an older drift; audit again"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditFolderError(f"{path} is unreadable: {exc}") from None


def _decimal(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text)
