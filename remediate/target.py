"""What a plan needs to know about its target database, captured at audit time.

``target.json`` in the audit folder holds the target's fingerprint (dialect,
database name, the server's identity, a hash of every audited table's reflected
schema), the columns
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
from remediate.sql import get_script_dialect, type_family

TARGET = "target.json"

# Type families a plan can render as SQL literals; anything else is manual.
FAMILIES = ("integer", "numeric", "float", "string", "boolean", "datetime", "date", "time")


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


def server_identity(conn: Connection) -> tuple[str | None, str | None]:
    """Which server (not which address) the connection reached: ``(identity, None)``,
    or ``(None, why it cannot be read)``; never raises for a database error.

    * PostgreSQL: the cluster's ``system_identifier`` (``pg_control_system()``, set by
      initdb; any role may call it unless EXECUTE was revoked). Shared by physical
      copies: streaming standbys and clusters restored from a base backup or a disk
      snapshot.
    * MariaDB: ``@@hostname:@@port`` and ``@@server_uid`` (a hash of a network
      interface's MAC address and the port); MySQL: ``@@server_uuid`` instead of
      ``server_uid``. Readable by any user.
    * SQLite: this machine's host name and the database file's device and inode
      (``PRAGMA database_list`` names the file SQLite opened).
    """
    name = conn.dialect.name
    try:
        if name == "postgresql":
            return _postgres_identity(conn)
        if name == "mysql":
            return _mysql_identity(conn)
        if name == "sqlite":
            return _sqlite_identity(conn)
    except sa.exc.DBAPIError as exc:
        return None, _first_line(exc.orig) or type(exc.orig).__name__
    return None, f"drift reads no server identity on {name}"


def _postgres_identity(conn: Connection) -> tuple[str | None, str | None]:
    # Asked first, so that a refused call never aborts the caller's transaction.
    allowed = conn.exec_driver_sql(
        "SELECT CASE WHEN to_regprocedure('pg_catalog.pg_control_system()') IS NOT NULL "
        "THEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') END"
    ).scalar()
    if allowed is None:
        return None, "this server has no pg_control_system()"
    if not allowed:
        user = conn.exec_driver_sql("SELECT current_user").scalar()
        return None, (
            f"role {user} may not call pg_control_system() "
            f"(GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO {user})"
        )
    with conn.begin_nested():
        system = conn.exec_driver_sql(
            "SELECT system_identifier FROM pg_catalog.pg_control_system()"
        ).scalar()
    return f"postgresql system {system}", None


def _mysql_identity(conn: Connection) -> tuple[str | None, str | None]:
    rows = conn.exec_driver_sql(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
        "('hostname', 'port', 'server_uuid', 'server_uid')"
    ).all()
    found = {str(n).lower(): str(v) for n, v in rows}
    where = f"{found.get('hostname', '?')}:{found.get('port', '?')}"
    if found.get("server_uuid"):
        return f"mysql {where} server_uuid {found['server_uuid']}", None
    if found.get("server_uid"):
        return f"mariadb {where} server_uid {found['server_uid']}", None
    if "hostname" in found:
        return f"mysql {where}", None
    return None, "the server shows neither @@hostname nor @@server_uuid/@@server_uid"


def _sqlite_identity(conn: Connection) -> tuple[str | None, str | None]:
    import os
    import socket

    files = {row[1]: row[2] for row in conn.exec_driver_sql("PRAGMA database_list")}
    path = files.get("main") or ""
    if not path:
        return None, "an in-memory or temporary SQLite database has no file"
    try:
        stat = os.stat(path)
    except OSError as exc:
        return None, f"cannot stat {path}: {exc.strerror}"
    return f"sqlite host {socket.gethostname()} device {stat.st_dev} inode {stat.st_ino}", None


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""


def fingerprint(conn: Connection, bound: BoundSpec, url: URL) -> dict[str, Any]:
    """Dialect, database name, the server's identity (:func:`server_identity`; with
    ``server_note`` saying why when it is None) and a hash of every audited table's
    schema."""
    tables: dict[str, Any] = {}
    for stream in bound.streams.values():
        tables[_qualified(stream.table)] = describe_table(conn, stream.table)
    for entity in bound.entities.values():
        tables[_qualified(entity.table)] = describe_table(conn, entity.table)
    canonical = json.dumps(
        [tables[name] for name in sorted(tables)], sort_keys=True, separators=(",", ":")
    )
    server, note = server_identity(conn)
    data = {
        "dialect": conn.dialect.name,
        "database": database_name(conn, url),
        "server": server,
        "schema_sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        "tables": sorted(tables),
    }
    if note is not None:
        data["server_note"] = note
    return data


def target_problem(audited: dict[str, Any], live: dict[str, Any]) -> str | None:
    """Why ``live`` (this connection's :func:`fingerprint`) may not be the audited target,
    as the refusal says it; None when dialect, database, server and schema all match.

    A server identity that either side could not read (or a plan written before drift
    recorded it) is a problem too: the check cannot tell the servers apart then.
    """
    if live["dialect"] != audited["dialect"] or live["database"] != audited["database"]:
        return (
            f"the target is not the audited database (audited {audited['dialect']} "
            f"{audited['database']}, this is {live['dialect']} {live['database']})"
        )
    unsure = "cannot tell whether the target is the audited server"
    if "server" not in audited:
        return (
            f"{unsure} (the plan was made by an older drift, which did not record it; audit again)"
        )
    if audited["server"] is None:
        why = audited.get("server_note") or "unknown"
        return f"{unsure} (the audit could not read the server's identity: {why})"
    if live["server"] is None:
        why = live.get("server_note") or "unknown"
        return f"{unsure} (this server's identity is unreadable: {why})"
    if live["server"] != audited["server"]:
        return (
            f"the target is not the audited server (audited {audited['server']}, "
            f"this is {live['server']})"
        )
    if live["schema_sha256"] != audited["schema_sha256"]:
        return "the target is not the audited database (schema of the audited tables differs)"
    return None


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
    dialect = get_dialect(conn.dialect.name)
    for name, keys in wanted.items():
        entity = bound.entities[name]
        if entity.key_columns is None:
            continue
        found: dict[str, Any] = {}
        # Each value as the audit's findings hold it: read exactly (a delete's guard
        # compares each value, and a MariaDB FLOAT reads rounded to 6 digits otherwise);
        # SQLite's dates as their stored text (keys as the findings' keys, read as before).
        keyed = {c.name for c in entity.key_columns}
        columns = [
            (dialect.exactly(c) if c.name in keyed else dialect.stored(dialect.exactly(c))).label(
                c.name
            )
            for c in entity.table.columns
        ]
        for start in range(0, len(keys), 1000):
            chunk = [tuple(from_json(k)) for k in keys[start : start + 1000]]
            query = sa.select(*columns).where(key_filter_clause(entity.key, chunk))
            for row in conn.execute(query):
                values = dict(row._mapping)
                key = "[" + ",".join(to_json(values[c.name]) for c in entity.key_columns) + "]"
                found.setdefault(key, []).append(values)
        orphans[name] = {k: rows[0] for k, rows in found.items() if len(rows) == 1}
    data = {
        # With the session settings the plan's values were read in (MariaDB: the time
        # zone of TIMESTAMP values), which its scripts and drift apply set again.
        "fingerprint": fingerprint(conn, bound, url)
        | get_script_dialect(conn.dialect.name).session(conn),
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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuditFolderError(
            f"{audit_dir} has no {TARGET}: it was written by an older drift; audit again"
        ) from None
    except OSError as exc:
        raise AuditFolderError(f"{path} is unreadable: {exc}") from None
    return parse_target(audit_dir, raw)


def parse_target(audit_dir: Path, raw: bytes) -> dict[str, Any]:
    """target.json's content, from bytes already read (:func:`read_target` reads them)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_float=_decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditFolderError(f"{audit_dir / TARGET} is unreadable: {exc}") from None


def _decimal(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text)
