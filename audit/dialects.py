"""Per-dialect differences of the audit, one small class per database.

Everything else in the audit is built from SQLAlchemy Core constructs and is
portable; only what genuinely differs between PostgreSQL, MySQL/MariaDB and
SQLite lives here: how a read-only consistent snapshot is opened and how two
values are compared exactly.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from audit.errors import DatabaseError, did_you_mean


class Dialect:
    """What differs between databases for the audit."""

    name: ClassVar[str] = ""
    snapshot_isolation: ClassVar[str] = ""
    #: The diff FULL OUTER JOINs the sides instead of left-joining them to a
    #: UNION of their keys, which computes every aggregate twice.
    full_outer_join: ClassVar[bool] = False
    #: A diff restricted to some keys joins the entity table as a subquery filtered by
    #: those keys (FULL OUTER JOIN dialects). PostgreSQL then reads only those rows
    #: (it cannot push a filter on the joined key into one side of a full join);
    #: SQLite would scan such a subquery once per row, so it joins the table whole.
    filters_current_rows: ClassVar[bool] = False
    #: A first/last fold whose stream is ordered by one unique NOT NULL column picks
    #: its row by joining back ``max``/``min`` of that column per key instead of a
    #: ``ROW_NUMBER()`` window: MariaDB materializes the whole window before keeping
    #: ``rn = 1`` (5M order events: 19 s as a window, 4 s picked).
    picks_first_last: ClassVar[bool] = False
    #: Other connections can join an open snapshot (:meth:`export_snapshot`), so
    #: entities can be diffed in parallel and still read one database state.
    shares_snapshot: ClassVar[bool] = False

    def open_snapshot(self, conn: Connection) -> Connection:
        """Start a read-only transaction that sees one consistent snapshot."""
        raise NotImplementedError

    def export_snapshot(self, conn: Connection) -> str:
        """An id other connections pass to :meth:`join_snapshot` (while ``conn``'s
        transaction stays open)."""
        raise NotImplementedError(f"{self.name} cannot share a snapshot between connections")

    def join_snapshot(self, conn: Connection, snapshot_id: str) -> Connection:
        """Start a read-only transaction that sees the exported snapshot ``snapshot_id``."""
        raise NotImplementedError(f"{self.name} cannot share a snapshot between connections")

    def row_estimate(self, conn: Connection, table: sa.Table) -> int | None:
        """The planner statistics' row count of ``table``; None when there are none."""
        return None

    def snapshot_time(self, conn: Connection) -> object:
        """The database's clock at the start of the snapshot."""
        return conn.execute(sa.select(sa.func.current_timestamp())).scalar_one()

    def reflect_listeners(self) -> list[tuple[str, Any]]:
        """Event listeners for reflecting a table (work-arounds for reflection quirks)."""
        return []

    def invalid_indexes(self, conn: Connection) -> set[tuple[str, str, str]]:
        """(schema, table, index) of indexes the database keeps but does not trust."""
        return set()

    def whole_table_settings(self) -> tuple[list[str], list[str]]:
        """Session settings for a diff that reads whole tables, and how to undo them."""
        return [], []

    def some_keys_settings(self) -> tuple[list[str], list[str]]:
        """Session settings for a diff restricted to some keys, and how to undo them."""
        return [], []

    def differs(self, a: ColumnElement, b: ColumnElement, text: bool) -> ColumnElement:
        """Null-safe 'a and b are not the same value'; exact for text."""
        return a.is_distinct_from(b)

    def single_float(self, type_: sa.types.TypeEngine) -> bool:
        """True for this database's single-precision float type (none on SQLite)."""
        return False

    def exactly(self, expr: ColumnElement, single: bool | None = None) -> ColumnElement:
        """``expr`` as a value the driver reads exactly: a single-precision value (by its
        type, or ``single``) as a double. MariaDB sends a FLOAT as text with 6 significant
        digits (1234568 read as 1234570), PostgreSQL a ``real`` as the shortest text that
        rounds back to it (0.1, for 0.100000001490116...), so a correction computed from
        it is off. Only in select lists: comparisons use the value itself."""
        if single is None:
            single = self.single_float(expr.type)
        return _as_double(expr) if single else expr

    def in_column_type(self, type_: sa.types.TypeEngine, expr: ColumnElement) -> ColumnElement:
        """``expr`` rounded as storing it in a column of type ``type_`` would round it:
        cast to single precision for a single-precision column (unless it is one)."""
        if self.single_float(type_) and not self.single_float(expr.type):
            return _single_float(expr)
        return expr

    def non_numeric(self, value: ColumnElement) -> ColumnElement | None:
        """True for a value a sum would silently treat as 0; None when the engine
        itself rejects such sums (or offers no way to tell)."""
        return None

    def stored(self, expr: ColumnElement) -> ColumnElement:
        """``expr`` as a finding (or a plan) holds its value: as the driver reads it."""
        return expr

    def json_text(self, expr: ColumnElement, path: tuple[str, ...]) -> ColumnElement:
        """The value at ``path`` inside a JSON (or JSON text) column, as text.

        A JSON null or a missing path reads as SQL NULL. Compiled per dialect
        by :class:`json_text` below; the path is always a bound parameter.
        """
        return json_text(expr, path)

    def json_invalid(self, column: ColumnElement) -> ColumnElement | None:
        """True for a non-NULL value that is not well-formed JSON; None when the engine
        itself raises an error on reading one (PostgreSQL)."""
        return None

    def bytes_text(self, expr: ColumnElement) -> ColumnElement:
        """Binary data read as UTF-8 text (so JSON stored as bytes can be read)."""
        return bytes_text(expr)


#: PostgreSQL: the ``random_page_cost`` of a diff restricted to some keys (at most).
SOME_KEYS_RANDOM_PAGE_COST = 1.1

_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]{1,64}")


class PostgresDialect(Dialect):
    name = "postgresql"
    snapshot_isolation = "REPEATABLE READ, READ ONLY"
    full_outer_join = True
    shares_snapshot = True
    filters_current_rows = True

    def open_snapshot(self, conn: Connection) -> Connection:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        conn.begin()
        # The snapshot is taken by the first statement of the transaction.
        conn.exec_driver_sql("SELECT 1")
        # JIT compiles each diff query for a fixed ~0.2 s, triggered by cost estimates
        # that the drift filter and per-drifted-key lookups overstate; measured at
        # 1M-10M stream rows it never paid back (docs/benchmarks.md).
        conn.exec_driver_sql("SET LOCAL jit = off")
        return conn

    def export_snapshot(self, conn: Connection) -> str:
        # As pg_dump --jobs does: the id stays valid while this transaction is open.
        return str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())

    def join_snapshot(self, conn: Connection, snapshot_id: str) -> Connection:
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise DatabaseError(f"unexpected snapshot id from the server: {snapshot_id!r}")
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        conn.begin()
        # Must be the transaction's first statement (a utility command: no bind parameters).
        conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        conn.exec_driver_sql("SET LOCAL jit = off")
        return conn

    def differs(self, a: ColumnElement, b: ColumnElement, text: bool) -> ColumnElement:
        if text:
            # Under a nondeterministic collation (ICU, e.g. case- or accent-insensitive)
            # 'PAID' equals 'paid'; under "C" equal text is the same characters. As text
            # first: an enum or a domain takes no COLLATE, and citext ignores it.
            a, b = _c_text(a), _c_text(b)
        return a.is_distinct_from(b)

    def single_float(self, type_: sa.types.TypeEngine) -> bool:
        return isinstance(type_, sa.REAL)

    def row_estimate(self, conn: Connection, table: sa.Table) -> int | None:
        # reltuples: kept by VACUUM, ANALYZE and autovacuum; -1 before the first of them.
        name = conn.dialect.identifier_preparer.format_table(table)
        found = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": name},
        ).scalar()
        return None if found is None or found < 0 else int(found)

    def snapshot_time(self, conn: Connection) -> object:
        return conn.exec_driver_sql("SELECT transaction_timestamp()").scalar_one()

    def invalid_indexes(self, conn: Connection) -> set[tuple[str, str, str]]:
        """Indexes marked invalid (usually none): what a failed ``CREATE INDEX
        CONCURRENTLY`` leaves behind, for a unique one often because of the very
        duplicates it was to forbid. The planner ignores them. Asked of the catalog,
        not of reflection: SQLAlchemy 2.0 (which drift allows) reflects them as
        ordinary indexes."""
        rows = conn.exec_driver_sql(
            "SELECT n.nspname, t.relname, c.relname FROM pg_catalog.pg_index i "
            "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_catalog.pg_class t ON t.oid = i.indrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
            "WHERE NOT i.indisvalid"
        )
        return {(schema, table, index) for schema, table, index in rows}

    def whole_table_settings(self) -> tuple[list[str], list[str]]:
        """No plain or index-only scans while a full diff runs.

        A full diff reads every row of every stream: sequential scans feeding
        hash or sort plans are what it needs. The planner otherwise walks whole
        tables through an index to get rows in key order (a GroupAggregate or a
        window without a sort), random I/O that measured 3-5x slower at 10M
        rows (docs/benchmarks.md). Bitmap index scans stay allowed, so per-key
        lookups (the last event time of a drifted key) still use the index.
        """
        names = ("enable_indexscan", "enable_indexonlyscan")
        return [f"SET LOCAL {n} = off" for n in names], [f"SET LOCAL {n} TO DEFAULT" for n in names]

    def some_keys_settings(self) -> tuple[list[str], list[str]]:
        """Random reads priced as cached while a diff restricted to some keys runs.

        An incremental audit's diff (or one restricted with ``only_keys``) reads
        the stream rows of a few thousand keys, scattered over the table: index
        lookups. (Verify's re-audit, remediate/verify.py, runs its diffs without a
        dialect and keeps the server's settings.) With the default
        ``random_page_cost`` of 4 (a spinning disk), the planner switched to a
        sequential scan of the whole 5M-row stream at ~2,500 touched keys,
        0.7-0.8 s instead of 0.25 s per entity (docs/benchmarks.md). 1.1 is the
        usual value for SSDs and cached tables; a lower setting is kept, and the
        setting is put back as it was after. The planner still scans the table
        when the keys are many.
        """
        lower = (
            "SELECT set_config('drift.random_page_cost', current_setting('random_page_cost'), "
            "true), set_config('random_page_cost', least(current_setting('random_page_cost')"
            f"::float8, {SOME_KEYS_RANDOM_PAGE_COST})::text, true)"
        )
        restore = (
            "SELECT set_config('random_page_cost', current_setting('drift.random_page_cost'), true)"
        )
        return [lower], [restore]


#: MariaDB/MySQL: the in-memory limit of a full diff's temporary tables (key sets,
#: aggregates), per session. A million keys of a VARCHAR(32) take ~130 MB.
TEMP_TABLE_BYTES = 256 * 1024 * 1024


class MySQLDialect(Dialect):
    name = "mysql"
    picks_first_last = True
    snapshot_isolation = "WITH CONSISTENT SNAPSHOT, READ ONLY (REPEATABLE READ)"

    def open_snapshot(self, conn: Connection) -> Connection:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        return conn

    def whole_table_settings(self) -> tuple[list[str], list[str]]:
        """Derived tables materialized, not merged, and kept in memory while a full diff runs.

        Merged into the join, the ``ROW_NUMBER()`` subquery of a first/last fold
        keeps every stream row and applies ``rn = 1`` per joined key: 5.1 s
        instead of 1.3 s for 500,000 order events. The key set and aggregates of a
        million keys outgrow the server's default 16 MB for in-memory temporary
        tables and go to disk: the session's limit is raised to
        :data:`TEMP_TABLE_BYTES` (never lowered), 85 s -> 14 s for one entity at
        1M keys / 5M stream rows (docs/benchmarks.md). Both are restored after.
        """
        size = f"GREATEST(@@SESSION.%s, {TEMP_TABLE_BYTES})"
        return (
            [
                "SET @drift_optimizer_switch = @@SESSION.optimizer_switch",
                "SET @drift_tmp_table_size = @@SESSION.tmp_table_size",
                "SET @drift_max_heap_table_size = @@SESSION.max_heap_table_size",
                "SET SESSION optimizer_switch = 'derived_merge=off'",
                "SET SESSION max_heap_table_size = " + size % "max_heap_table_size",
                "SET SESSION tmp_table_size = " + size % "tmp_table_size",
            ],
            [
                "SET SESSION optimizer_switch = @drift_optimizer_switch",
                "SET SESSION tmp_table_size = @drift_tmp_table_size",
                "SET SESSION max_heap_table_size = @drift_max_heap_table_size",
            ],
        )

    def snapshot_time(self, conn: Connection) -> object:
        return conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar_one()

    def reflect_listeners(self) -> list[tuple[str, Any]]:
        # SQLAlchemy's MySQL reflection parses SHOW CREATE TABLE and keeps a backtick
        # inside a column name doubled (`a``b` reflects as "a``b"): undouble it.
        return [("column_reflect", _unescape_column_name)]

    def differs(self, a: ColumnElement, b: ColumnElement, text: bool) -> ColumnElement:
        if text:
            # MySQL's default collations ignore case and trailing spaces; bytes of
            # the utf8mb4 text are what "exact" means.
            a, b = _mysql_bytes(a), _mysql_bytes(b)
        return sa.not_(a.op("<=>", is_comparison=True)(b))

    def single_float(self, type_: sa.types.TypeEngine) -> bool:
        # FLOAT(p) with p > 24 is a DOUBLE in the catalog, and REAL too (unless the
        # sql_mode has REAL_AS_FLOAT, when the catalog says FLOAT).
        return isinstance(type_, sa.FLOAT)

    def json_invalid(self, column: ColumnElement) -> ColumnElement | None:
        # JSON_EXTRACT reads malformed JSON as NULL, silently.
        return sa.and_(column.is_not(None), sa.func.json_valid(column) == 0)

    def stored(self, expr: ColumnElement) -> ColumnElement:
        # A TIME is a duration (-838:59:59 to 838:59:59) that the driver reads as a
        # timedelta, written '1 day, 2:00:00' or '-1 day, 23:00:00'; MariaDB reads those
        # (cast, without an error) as 00:00:01. Its own text ('26:00:00') reads back exactly.
        if isinstance(expr.type, sa.Time):
            return sa.type_coerce(sa.cast(expr, sa.String()), sa.String())
        return expr


def _c_text(expr: ColumnElement) -> ColumnElement:
    """PostgreSQL: a value as text under the "C" collation (compared character by character)."""
    return sa.collate(sa.cast(expr, sa.Text()), "C")


def _unescape_column_name(inspector: Any, table: sa.Table, column_info: dict) -> None:
    column_info["name"] = column_info["name"].replace("``", "`")


def _mysql_bytes(expr: ColumnElement) -> ColumnElement:
    return _utf8mb4_bytes(expr)


class _utf8mb4_bytes(FunctionElement):  # noqa: N801 - a SQL function
    """MySQL: the utf8mb4 bytes of a value, compared byte by byte."""

    inherit_cache = True
    type = sa.LargeBinary()
    name = "utf8mb4_bytes"


@compiles(_utf8mb4_bytes, "mysql")
def _compile_utf8mb4_bytes(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CAST(CONVERT({compiler.process(arg, **kw)} USING utf8mb4) AS BINARY)"


class _cast_float(FunctionElement):  # noqa: N801 - a SQL function
    """A value cast to a float type of ``casts`` (PostgreSQL's name, MariaDB's); the value
    itself elsewhere (SQLite has one float type).

    SQLAlchemy's own CAST to FLOAT on MariaDB is skipped (with a warning) unless the
    connected server is MySQL 8.0.17 or later; MariaDB takes it since 10.4.5.
    """

    inherit_cache = True
    type = sa.Float()
    casts: ClassVar[tuple[str, str]] = ("", "")


class _single_float(_cast_float):  # noqa: N801 - a SQL function
    """A value cast to single precision."""

    inherit_cache = True
    name = "single_float"
    casts = ("REAL", "FLOAT")


class _as_double(_cast_float):  # noqa: N801 - a SQL function
    """A (single-precision) value as a double, which holds it exactly (see Dialect.exactly)."""

    inherit_cache = True
    name = "as_double"
    casts = ("DOUBLE PRECISION", "DOUBLE")


@compiles(_cast_float)
def _compile_cast_float(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return compiler.process(arg, **kw)


@compiles(_cast_float, "postgresql")
def _compile_cast_float_postgresql(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CAST({compiler.process(arg, **kw)} AS {element.casts[0]})"


@compiles(_cast_float, "mysql")
@compiles(_cast_float, "mariadb")
def _compile_cast_float_mysql(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CAST({compiler.process(arg, **kw)} AS {element.casts[1]})"


class _InList(ColumnElement[bool]):
    """``column IN (values)``; on PostgreSQL ``column = ANY(:values)``, one array parameter.

    Thousands of keys (verify checks 5,000 per query) cost the driver and SQLAlchemy
    more as one placeholder each than the query costs the database.
    """

    inherit_cache = False
    type = sa.Boolean()
    # A condition, as ``IN`` is: without this, SQLAlchemy writes ``(... IN (...)) = 1`` on
    # SQLite and MariaDB (no native boolean), which no index can serve.
    _is_implicitly_boolean = True

    def __init__(self, column: ColumnElement, values: list[Any]) -> None:
        self.column = column
        self.values = values


def in_list(column: ColumnElement, values: list[Any]) -> ColumnElement:
    """``column IN (values)``, compiled per dialect (see :class:`_InList`)."""
    return _InList(column, values)


@compiles(_InList)
def _compile_in_list(element, compiler, **kw):  # type: ignore[no-untyped-def]
    return compiler.process(element.column.in_(element.values), **kw)


@compiles(_InList, "postgresql")
def _compile_in_list_postgresql(element, compiler, **kw):  # type: ignore[no-untyped-def]
    values, column = element.values, element.column
    # Only plain text or integer keys, all of one Python type: psycopg sends a list of
    # them as one typed array (mixed int and Decimal it would refuse).
    kinds = {type(v) for v in values}
    text = isinstance(column.type, sa.String) and kinds == {str}
    plain = text or (isinstance(column.type, sa.Integer) and kinds == {int})
    if not values or not plain:
        return compiler.process(column.in_(values), **kw)
    # Imported here: a SQLite or MariaDB audit need not load PostgreSQL's dialect (~0.05 s).
    from sqlalchemy.dialects.postgresql import ARRAY

    array = sa.bindparam(None, values, type_=ARRAY(column.type), unique=True)
    return compiler.process(column == sa.any_(array), **kw)


class json_text(FunctionElement):  # noqa: N801 - a SQL function
    """The text at a path inside a JSON value (see :meth:`Dialect.json_text`)."""

    inherit_cache = False
    type = sa.Text()
    name = "json_text"

    def __init__(self, expr: ColumnElement, path: tuple[str, ...]) -> None:
        self.path = tuple(path)
        super().__init__(expr)


def _json_path(path: tuple[str, ...]) -> str:
    """A MySQL/SQLite JSON path: ``$."a"[0]`` (keys quoted; digits index arrays)."""
    return "$" + "".join(
        f"[{p}]"
        if p.isascii() and p.isdigit()
        else '."' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for p in path
    )


@compiles(json_text, "postgresql")
def _compile_json_text_pg(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    from sqlalchemy.dialects.postgresql import ARRAY

    path = sa.bindparam(None, list(element.path), type_=ARRAY(sa.Text()), unique=True)
    return f"(CAST({compiler.process(arg, **kw)} AS JSON) #>> {compiler.process(path, **kw)})"


@compiles(json_text, "mysql")
def _compile_json_text_mysql(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)

    def extracted() -> str:  # each use gets its own bound path (positional parameters)
        path = compiler.process(sa.bindparam(None, _json_path(element.path), unique=True), **kw)
        return f"JSON_EXTRACT({compiler.process(arg, **kw)}, {path})"

    return (
        f"(CASE WHEN JSON_TYPE({extracted()}) = 'NULL' THEN NULL "
        f"ELSE JSON_UNQUOTE({extracted()}) END)"
    )


@compiles(json_text, "sqlite")
def _compile_json_text_sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    path = compiler.process(sa.bindparam(None, _json_path(element.path), unique=True), **kw)
    return f"CAST(json_extract({compiler.process(arg, **kw)}, {path}) AS TEXT)"


class bytes_text(FunctionElement):  # noqa: N801 - a SQL function
    """UTF-8 text of a binary value (see :meth:`Dialect.bytes_text`)."""

    inherit_cache = True
    type = sa.Text()
    name = "bytes_text"


@compiles(bytes_text, "postgresql")
def _compile_bytes_text_pg(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"convert_from({compiler.process(arg, **kw)}, 'UTF8')"


@compiles(bytes_text, "mysql")
def _compile_bytes_text_mysql(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CONVERT({compiler.process(arg, **kw)} USING utf8mb4)"


@compiles(bytes_text, "sqlite")
def _compile_bytes_text_sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CAST({compiler.process(arg, **kw)} AS TEXT)"


class SQLiteDialect(Dialect):
    name = "sqlite"
    snapshot_isolation = "one read transaction (query_only)"
    full_outer_join = sqlite3.sqlite_version_info >= (3, 39, 0)

    def open_snapshot(self, conn: Connection) -> Connection:
        conn.begin()  # emits BEGIN (see audit.database)
        conn.exec_driver_sql("PRAGMA query_only = ON")
        # A deferred transaction takes its read snapshot at the first read.
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()
        return conn

    def snapshot_time(self, conn: Connection) -> object:
        return conn.exec_driver_sql("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").scalar_one()

    def differs(self, a: ColumnElement, b: ColumnElement, text: bool) -> ColumnElement:
        if text:
            b = sa.collate(b, "BINARY")
        return a.is_distinct_from(b)

    def json_invalid(self, column: ColumnElement) -> ColumnElement | None:
        # json_extract raises on malformed JSON text, but reads a blob as NULL.
        return sa.and_(column.is_not(None), sa.func.json_valid(column) == 0)

    def non_numeric(self, value: ColumnElement) -> ColumnElement | None:
        # SQLite's SUM reads 'abc' as 0: values must really be numbers.
        return sa.func.typeof(value).in_(["text", "blob"])

    def stored(self, expr: ColumnElement) -> ColumnElement:
        # A date or time is whatever text (or number) the application stored: read it as
        # is, not parsed by SQLAlchemy (which reads '2026-01-01T10:00:00' and
        # '2026-01-01 10:00:00' as one datetime, though SQLite compares them as two
        # texts). A plan then compares and writes exactly the stored value.
        if isinstance(expr.type, (sa.DateTime, sa.Date, sa.Time)):
            return sa.type_coerce(expr, sa.String())
        return expr


_DIALECTS: dict[str, type[Dialect]] = {
    cls.name: cls for cls in (PostgresDialect, MySQLDialect, SQLiteDialect)
}
_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}


def get_dialect(name: str) -> Dialect:
    """The dialect class for a database name, with "did you mean" on a typo."""
    key = _ALIASES.get(name, name)
    try:
        return _DIALECTS[key]()
    except KeyError:
        raise DatabaseError(
            f"unsupported dialect {name!r}{did_you_mean(name, [*_DIALECTS, *_ALIASES])}"
        ) from None
