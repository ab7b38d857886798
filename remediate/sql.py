"""Remediation SQL: Core statements per step, and one small class per dialect.

A :class:`Step` is one guarded change (an action of a plan, forwards or
backwards). :func:`step_statement` turns it into a SQLAlchemy Core statement;
:meth:`ScriptDialect.compile` renders that statement with literal binds for a
script, and ``drift apply`` executes the very same kind of statement with bound
parameters. Values reach SQL only through SQLAlchemy's literal processors.
:meth:`ScriptDialect.compile_step` gives the same text as compiling
``step_statement`` for every step, but compiles each statement *shape* once
(see :class:`_Slot`): a plan of 100,000 actions has a handful of shapes.

What differs between databases (how a guard aborts a standalone script, how a
transaction starts, which client runs the script) lives in one small class per
dialect, found by name with :func:`get_script_dialect`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.sql.elements import ColumnElement

from audit.dialects import _single_float, _utf8mb4_bytes, get_dialect
from audit.errors import PlanError, did_you_mean
from remediate.history import history_tables


class _Integer(sa.BigInteger):
    """BIGINT whose parameters may be Decimals: SQLite lets an INTEGER column hold 10.5.

    A fractional Decimal is bound as the float it came from (the audit read the
    column's REAL as a float and wrote its repr), an integral one as an int; sqlite3
    binds no Decimal. Used where drift apply binds by type family (SQLite).
    """

    def bind_processor(self, dialect: sa.engine.Dialect) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if isinstance(value, Decimal):
                return int(value) if value == value.to_integral_value() else float(value)
            return value

        return process


class _Temporal(sa.String):
    """A date, time or datetime as a plan holds it: text (or, on SQLite, a number).

    On PostgreSQL and MariaDB the text is the ISO form the audit read
    (``2026-01-01T10:00:00``, with the offset for a ``timestamptz``); on SQLite it
    is exactly the text the column stores, read unparsed (``Dialect.stored``).
    Each script dialect compares and assigns it as the column's own temporal type
    (:meth:`ScriptDialect.temporal_value`, :meth:`ScriptDialect.temporal_equals`),
    never as text: MariaDB's DATETIME reads as ``2026-01-01 10:00:00``.
    """

    family: ClassVar[str] = ""

    def literal_processor(self, dialect: sa.engine.Dialect) -> Callable[[Any], str]:
        # SQLite: a date the application stored as a number stays that number.
        text = super().literal_processor(dialect)
        assert text is not None

        def process(value: Any) -> str:
            if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
                return format(value, "f") if isinstance(value, Decimal) else str(value)
            if isinstance(value, float):
                return repr(value)
            return text(value)

        return process

    def bind_processor(self, dialect: sa.engine.Dialect) -> Callable[[Any], Any] | None:
        text = super().bind_processor(dialect)

        def process(value: Any) -> Any:
            if isinstance(value, Decimal):  # sqlite3 binds no Decimal
                return int(value) if value == value.to_integral_value() else float(value)
            return value if text is None or not isinstance(value, str) else text(value)

        return process


class _DateTimeText(_Temporal):
    family = "datetime"


class _DateText(_Temporal):
    family = "date"


class _TimeText(_Temporal):
    family = "time"


FAMILY_TYPES: dict[str, type[sa.types.TypeEngine]] = {
    "integer": _Integer,
    "numeric": sa.Numeric,
    "float": sa.Float,
    "string": sa.String,
    "boolean": sa.Boolean,
    "datetime": _DateTimeText,
    "date": _DateText,
    "time": _TimeText,
}


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


def temporal_family(type_: sa.types.TypeEngine) -> str | None:
    """The family ("datetime", "date", "time") of a temporal column type, offline or live."""
    family = type_.family if isinstance(type_, _Temporal) else type_family(type_)
    return family if family in ("datetime", "date", "time") else None


GUARD_FAILED = "drift: guard failed: a row changed since the audit; nothing was applied"


@dataclass(frozen=True)
class Step:
    """One guarded change to one row.

    ``op`` is delta (add ``value``), cas (set ``value`` where the column still
    holds ``observed``), insert (``row``, only if no row has the key) or delete
    (only the row that equals ``row`` in every column).
    """

    action_id: int
    entity: str
    key: tuple[Any, ...]
    op: str
    column: str | None = None
    value: Any = None
    observed: Any = None
    row: dict[str, Any] | None = None


def offline_table(info: dict[str, Any]) -> sa.Table:
    """A Table built from target.json's description (no database needed)."""
    columns = [
        sa.Column(c["name"], _offline_type(c), nullable=c["nullable"]) for c in info["columns"]
    ]
    return sa.Table(info["name"], sa.MetaData(), *columns, schema=info.get("schema"))


def _offline_type(column: dict[str, Any]) -> sa.types.TypeEngine:
    """A target.json column's type family; a float column's type says its precision."""
    if column["family"] == "float":
        # The type's text as its own database's reflection names it: PostgreSQL's
        # single precision is REAL, MariaDB's FLOAT (its REAL is a DOUBLE).
        text = str(column.get("type", "")).upper()
        if text.startswith("REAL"):
            return sa.REAL()
        if text.startswith("FLOAT"):
            return sa.FLOAT()
    return FAMILY_TYPES.get(column["family"], sa.String)()


def _literal(column: sa.Column, value: Any) -> ColumnElement:
    return sa.literal(value, type_=column.type)


def _is_text(column: sa.Column) -> bool:
    return isinstance(column.type, sa.String)


def _assigned(dialect: ScriptDialect, column: sa.Column, value: Any) -> ColumnElement:
    """``value`` as it is written into (or compared with) ``column``: a temporal value
    as the column's own temporal type."""
    family = temporal_family(column.type)
    if family is None:
        return _literal(column, value)
    return dialect.temporal_value(family, _literal(column, value))


def matches(dialect: ScriptDialect, column: sa.Column, value: Any) -> ColumnElement:
    """Null-safe, exact (byte-wise for text, as the column's type for dates and times)
    ``column = value``."""
    if value is None:
        return column.is_(None)
    if temporal_family(column.type) is not None:
        return dialect.temporal_equals(column, _assigned(dialect, column, value))
    literal = dialect.as_column_type(column, _literal(column, value))
    if _is_text(column):
        return dialect.exact_text_equals(column, literal)
    return column == literal


def key_match(
    table: sa.Table, key_names: list[str], key: tuple[Any, ...], dialect: ScriptDialect
) -> ColumnElement:
    """``key = values``, each value in its column's type (a single-precision key's 0.1
    is not the double 0.1)."""
    return sa.and_(
        *(
            table.c[n] == dialect.as_column_type(table.c[n], _literal(table.c[n], v))
            for n, v in zip(key_names, key)
        )
    )


def step_statement(
    step: Step, table: sa.Table, key_names: list[str], dialect: ScriptDialect
) -> sa.Executable:
    """The Core statement of a step; it changes exactly one row when its guard holds."""
    where_key = key_match(table, key_names, step.key, dialect)
    if step.op == "delta":
        assert step.column is not None, "a delta step names its column"
        column = table.c[step.column]
        return (
            table.update()
            .where(where_key)
            .values({column.name: column + _literal(column, step.value)})
        )
    if step.op == "cas":
        assert step.column is not None, "a cas step names its column"
        column = table.c[step.column]
        return (
            table.update()
            .where(where_key, matches(dialect, column, step.observed))
            .values({column.name: _assigned(dialect, column, step.value)})
        )
    assert step.row is not None
    if step.op == "insert":
        names = list(step.row)
        values = [_assigned(dialect, table.c[n], step.row[n]).label(n) for n in names]
        absent = ~sa.exists().where(where_key)
        return table.insert().from_select(names, sa.select(*values).where(absent))
    if step.op == "delete":
        guards = [
            matches(dialect, table.c[n], v) for n, v in step.row.items() if n not in key_names
        ]
        return table.delete().where(where_key, *guards)
    raise PlanError(f"unknown step {step.op!r}")


# --------------------------------------------------------------------------- shapes


class _Slot:
    """Stands for the ``index``-th value of a step while its statement shape compiles.

    The script compilers render a slot as a marker (:data:`_MARK`-delimited)
    and note the SQL type it was rendered with; :class:`_Shape` later puts each
    value there through that same compiler's ``render_literal_value``, exactly
    as compiling the step itself would have. None is never a slot: it renders
    as NULL or ``IS NULL`` and so changes the statement's structure.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Slot) and other.index == self.index

    def __hash__(self) -> int:
        return hash((_Slot, self.index))

    def __repr__(self) -> str:
        return f"_Slot({self.index})"


# NUL cannot occur in an identifier on PostgreSQL, MariaDB/MySQL or SQLite, nor in any
# SQL text drift writes around the values; _Shape.of still checks every marker it splits.
_MARK = "\x00"


def _slotted(step: Step) -> tuple[Step, list[Any]]:
    """The step with each value other than None replaced by a slot, and the values."""
    values: list[Any] = []

    def slot(value: Any) -> Any:
        if value is None:
            return None
        values.append(value)
        return _Slot(len(values) - 1)

    key = tuple(slot(v) for v in step.key)
    value, observed = slot(step.value), slot(step.observed)
    row = None if step.row is None else {n: slot(v) for n, v in step.row.items()}
    return Step(0, step.entity, key, step.op, step.column, value, observed, row), values


@dataclass(frozen=True)
class _Shape:
    """A compiled statement shape: text between slots, and how to render each slot."""

    texts: tuple[str, ...]
    slots: tuple[tuple[int, sa.types.TypeEngine], ...]
    render: Callable[[Any, sa.types.TypeEngine], str]

    @classmethod
    def of(cls, compiled: Any) -> _Shape | None:
        """The shape of a statement compiled with slots; None if its markers are ambiguous."""
        rendered: list[tuple[int, sa.types.TypeEngine]] = compiled.drift_slots
        pieces = str(compiled).split(_MARK)
        texts, markers = tuple(pieces[0::2]), pieces[1::2]
        if len(pieces) % 2 != 1 or sorted(markers) != sorted(map(str, range(len(rendered)))):
            return None
        return cls(texts, tuple(rendered[int(m)] for m in markers), compiled.render_literal_value)

    def fill(self, values: list[Any], memo: dict[tuple[Any, Any], str]) -> str:
        """The statement with ``values`` rendered into its slots.

        ``memo`` holds literals already rendered, by (type, value), for int and str
        values only: for them equal values render alike (unlike 1.0 and 1.00 as
        Decimals, or one instant in two time zones). A plan renders each key twice
        (fix and rollback) and many values again and again.
        """
        texts, render = self.texts, self.render
        out = [texts[0]]
        for (index, type_), text in zip(self.slots, texts[1:]):
            value = values[index]
            if type(value) is int or type(value) is str:
                literal = memo.get((type_, value))
                if literal is None:
                    if len(memo) >= _MEMO_SIZE:
                        memo.clear()
                    literal = memo[type_, value] = render(value, type_)
                out.append(literal)
            else:
                out.append(render(value, type_))
            out.append(text)
        return "".join(out).strip()


#: Literals a script dialect keeps (see _Shape.fill); then it starts again.
_MEMO_SIZE = 20_000


class _SlotRendering:
    """Compiler mixin: a :class:`_Slot` renders as a marker naming its occurrence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before the base __init__, which compiles.
        self.drift_slots: list[tuple[int, sa.types.TypeEngine]] = []
        super().__init__(*args, **kwargs)

    def render_literal_value(self, value: Any, type_: sa.types.TypeEngine) -> str:
        if isinstance(value, _Slot):
            self.drift_slots.append((value.index, type_))
            return f"{_MARK}{len(self.drift_slots) - 1}{_MARK}"
        return super().render_literal_value(value, type_)  # type: ignore[misc]


class _ExactDecimals:
    """Compiler mixin: a Decimal for an integer or fixed-point column renders exactly.

    SQLAlchemy renders a Decimal with ``str()``: ``1.234E-7`` (or ``1E+30``) for a
    NUMERIC is a DOUBLE literal on MariaDB, so ``total + 1.234E-7`` is computed in
    double and rounded into the DECIMAL column; and Integer's ``int()`` truncates the
    10.5 that SQLite lets an INTEGER column hold. Plain positional notation is an
    exact decimal literal on every engine. A float column keeps the exponent form,
    a double literal: the column's own kind of value.
    """

    def render_literal_value(self, value: Any, type_: sa.types.TypeEngine) -> str:
        if (
            isinstance(value, Decimal)
            and value.is_finite()
            and isinstance(type_, (sa.Integer, sa.Numeric))
            and not isinstance(type_, sa.Float)
            and not (isinstance(type_, sa.Integer) and value == value.to_integral_value())
        ):
            exponent = value.as_tuple().exponent
            assert isinstance(exponent, int)
            if exponent >= -_POSITIONAL_DIGITS and value.adjusted() < _POSITIONAL_DIGITS:
                return format(value, "f")
            return str(value)  # no DECIMAL column holds it; at least never truncated
        return super().render_literal_value(value, type_)  # type: ignore[misc]


#: Digits on either side of the point up to which a Decimal is written out in full
#: (MariaDB's DECIMAL holds 65 digits, PostgreSQL's numeric any number).
_POSITIONAL_DIGITS = 1000


# --------------------------------------------------------------------------- dialects


class ScriptDialect:
    """How one database runs a guarded, all-or-nothing remediation script."""

    name: ClassVar[str] = ""
    client: ClassVar[str] = ""
    # drift apply reads the values after an UPDATE from its RETURNING clause (else a SELECT).
    update_returning: ClassVar[bool] = False

    def __init__(self) -> None:
        self.audit = get_dialect(self.name)
        self._compiling_dialect: sa.engine.Dialect | None = None
        self._shapes: dict[tuple[Any, ...], _Shape | None] = {}
        self._literals: dict[tuple[Any, Any], str] = {}

    def sa_dialect(self) -> sa.engine.Dialect:
        raise NotImplementedError

    def compile(self, statement: sa.ClauseElement | sa.Executable) -> str:
        """The statement as text with every value rendered as a literal."""
        return str(self._compiled(statement)).strip()

    def _compiled(self, statement: sa.ClauseElement | sa.Executable) -> Any:
        if self._compiling_dialect is None:
            self._compiling_dialect = self.sa_dialect()
        assert isinstance(statement, sa.ClauseElement)
        return statement.compile(
            dialect=self._compiling_dialect, compile_kwargs={"literal_binds": True}
        )

    def compile_step(self, step: Step, table: sa.Table, key_names: list[str]) -> str:
        """``compile(step_statement(step, table, key_names, self))``, the same text.

        Each statement shape (the step without its values, but with its NULLs)
        is compiled once per table; each step's values are then rendered into
        it by the compiler that would have rendered them in place.
        """
        # The shape's identity: what _slotted(step) keeps (its slots are numbered
        # in order, so which values are None decides them), without building it.
        row, step_key = step.row, step.key
        key = (
            table,
            tuple(key_names),
            step.op,
            step.entity,
            step.column,
            # () when no key value is None (the key's length is the table's).
            tuple([v is None for v in step_key]) if None in step_key else (),
            step.value is None,
            step.observed is None,
            None if row is None else tuple([(n, v is None) for n, v in row.items()]),
        )
        try:
            shape = self._shapes[key]
        except KeyError:
            slotted, _ = _slotted(step)
            compiled = self._compiled(step_statement(slotted, table, key_names, self))
            shape = self._shapes[key] = _Shape.of(compiled)
        if shape is None:
            return self.compile(step_statement(step, table, key_names, self))
        values = [v for v in step_key if v is not None]
        if step.value is not None:
            values.append(step.value)
        if step.observed is not None:
            values.append(step.observed)
        if row is not None:
            values.extend(v for v in row.values() if v is not None)
        return shape.fill(values, self._literals)

    def exact_text_equals(self, column: ColumnElement, value: ColumnElement) -> ColumnElement:
        """Text equality byte for byte, whatever the column's collation."""
        return column == value

    def temporal_value(self, family: str, value: ColumnElement) -> ColumnElement:
        """A date, time or datetime value (a literal of the plan's text) as the column's
        temporal type, for a comparison or an assignment.

        PostgreSQL reads an untyped literal as the type of the column it meets (in a
        comparison, a SET and an INSERT's SELECT): ``'2026-01-01T10:00:00'`` is a
        timestamp there, and a timestamptz's text carries its offset, so the client's
        TimeZone does not matter.
        """
        return value

    def temporal_equals(self, column: ColumnElement, value: ColumnElement) -> ColumnElement:
        """``column = value`` for a date, time or datetime column and a
        :meth:`temporal_value`."""
        return column == value

    def as_column_type(self, column: sa.Column, value: ColumnElement) -> ColumnElement:
        """``value`` as the column's own type where a comparison needs it.

        A single-precision column (PostgreSQL ``real``, MariaDB ``FLOAT``) holds 0.1
        as 0.100000001490116..., which is never equal to the double or decimal 0.1:
        the value is cast to single precision first (:class:`_single_float`).
        """
        if self.single_float(column.type):
            return _single_float(value)
        return value

    def single_float(self, type_: sa.types.TypeEngine) -> bool:
        """True for this database's single-precision float type."""
        return self.audit.single_float(type_)

    def session(self, conn: Connection) -> dict[str, Any]:
        """The audit session's settings that the values it read depend on (kept in the
        plan's fingerprint; :meth:`session_statements` and :meth:`set_session` restore them)."""
        return {}

    def session_statements(self, fingerprint: dict[str, Any]) -> list[str]:
        """A script's statements restoring :meth:`session` (none when the plan has none)."""
        return []

    def set_session(self, conn: Connection, fingerprint: dict[str, Any]) -> None:
        """drift apply: restore :meth:`session` on its connection (and any setting its
        statements need, as the scripts' prologue sets it)."""

    def history_ddl(self) -> list[str]:
        return [
            self.compile(sa.schema.CreateTable(table, if_not_exists=True)) + ";"
            for table in history_tables(sa.MetaData())
        ]

    def script_user(self) -> ColumnElement:
        return sa.func.current_user()

    def prologue(self, history: bool = True, checks: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Statements before the transaction: settings, then :meth:`refuse_first` of
        ``checks`` (the server's identity), then with ``history`` the history tables' DDL,
        which may commit: a script refused by ``checks`` has created nothing."""
        return [*self.refuse_first(checks), *(self.history_ddl() if history else [])]

    def begin(self) -> list[str]:
        return ["BEGIN;"]

    def guard_setup(self) -> list[str]:
        return []

    def plain(self, sql: str) -> str:
        """An unguarded statement in the transaction body."""
        return sql + ";"

    def guarded(self, sql: str, action_id: int) -> str:
        """A statement that aborts the whole script unless it changed one row."""
        raise NotImplementedError

    def table_exists(self, name: str) -> str:
        """A condition true when the script's unqualified ``name`` is an existing table."""
        raise NotImplementedError

    def refuse_unless(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        """Statements that abort the whole script, in the transaction, with the message of
        the first ``(condition, message)`` whose condition is not true.

        A condition is evaluated only once those before it held, so it may read a table
        that an earlier one (:meth:`table_exists`) proved is there.
        """
        raise NotImplementedError

    def refuse_first(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        """:meth:`refuse_unless` as statements of their own, before the transaction."""
        return self.refuse_unless(checks) if checks else []

    def server_checks(self, plan_id: str, server: str) -> list[tuple[str, str]]:
        """``(condition, message)`` pairs that hold only on the server whose identity
        (:func:`remediate.target.server_identity`) is ``server``, for
        :meth:`refuse_unless`; none where SQL cannot read the identity (SQLite: a file's
        device and inode). The identity is computed as drift computes it and compared
        byte for byte, NULL-safe (an identity that reads NULL refuses)."""
        return []

    def _other_server(self, plan_id: str, server: str) -> str:
        return (
            f"drift: refused: plan {plan_id} was audited on another server ({server}); run "
            "this script on that server, or audit this one and plan again; nothing was changed"
        )

    def _message(self, text: str) -> str:
        """A refusal message as a plain string literal (no control characters: SQLite's
        RAISE takes a literal, not the concatenation its compiler writes for them)."""
        return self.compile(sa.literal("".join(c if c.isprintable() else "?" for c in text)))

    def commit(self) -> list[str]:
        return ["COMMIT;"]

    def run_hint(self) -> str:
        raise NotImplementedError

    # ----------------------------------------------------------------- drift apply

    def apply_connection(self, conn: Connection) -> Connection:
        """The apply connection's transaction settings."""
        return conn

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        raise NotImplementedError

    def try_apply_lock(self, conn: Connection, url: URL, database: str) -> bool:
        """Take the per-database apply lock (kept until release); False when taken."""
        raise NotImplementedError

    def release_apply_lock(self, conn: Connection) -> None:
        raise NotImplementedError

    def drop_temp(self, conn: Connection, name: str) -> None:
        conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(name)}")

    def temp_type(self, column: sa.Column, family: str) -> sa.types.TypeEngine:
        """The type of a temp-table copy of ``column``."""
        return column.type

    def delta_type(self, column: sa.Column, family: str) -> sa.types.TypeEngine:
        """The type of a temp-table column of corrections to ``column`` (and their negations)."""
        return self.temp_type(column, family)

    def copy_rows(
        self,
        conn: Connection,
        table: sa.Table,
        families: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> bool:
        """Write ``rows`` (values in ``table``'s column order) with the driver's bulk load.

        ``families`` are the columns' type families. In the current transaction;
        False, having written nothing, when this database or driver has no bulk
        load or it could store some value differently from ``table.insert()``:
        the caller then inserts the rows itself.
        """
        return False


class PostgresScript(ScriptDialect):
    name = "postgresql"
    client = "psql"
    update_returning = True

    def sa_dialect(self) -> sa.engine.Dialect:
        # The named paramstyle keeps "%" in literals as is (pyformat would double it).
        from sqlalchemy.dialects.postgresql import psycopg

        dialect = psycopg.dialect(paramstyle="named")
        dialect.statement_compiler = _slot_compiler(self.name)
        return dialect

    def prologue(self, history: bool = True, checks: Sequence[tuple[str, str]] = ()) -> list[str]:
        # The script is UTF-8 whatever psql's client encoding (locale, PGCLIENTENCODING):
        # under LATIN1 the server would read each byte of 'é' as a character of its own.
        return [
            "SET client_encoding = 'UTF8';",
            "SET standard_conforming_strings = on;",
            *super().prologue(history, checks),
        ]

    def server_checks(self, plan_id: str, server: str) -> list[tuple[str, str]]:
        # Asked first: without EXECUTE on pg_control_system() (revoked from PUBLIC) the
        # call would fail with a bare "permission denied"; the message names the GRANT.
        function = "'pg_catalog.pg_control_system()'"
        return [
            (
                "COALESCE(pg_catalog.has_function_privilege(pg_catalog.to_regprocedure("
                f"{function}), 'EXECUTE'), false)",
                f"drift: refused: plan {plan_id} was audited on {server}; the role running "
                "this script cannot call pg_control_system() to tell whether this is that "
                "server (GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_system() TO the "
                "role, or run it as a role that may); nothing was changed",
            ),
            (
                "COALESCE((SELECT 'postgresql system ' || system_identifier FROM "
                f"pg_catalog.pg_control_system()) = {self.compile(sa.literal(server))}, false)",
                self._other_server(plan_id, server),
            ),
        ]

    def guarded(self, sql: str, action_id: int) -> str:
        tag = _dollar_tag(sql)
        return (
            f"DO {tag}\n"
            "DECLARE matched bigint;\n"
            "BEGIN\n"
            f"  {sql};\n"
            "  GET DIAGNOSTICS matched = ROW_COUNT;\n"
            "  IF matched <> 1 THEN\n"
            f"    RAISE EXCEPTION 'drift: guard failed at action {action_id}: % row(s) "
            "matched, expected 1; a row changed since the audit; nothing was applied', "
            "matched;\n"
            "  END IF;\n"
            "END\n"
            f"{tag};"
        )

    def table_exists(self, name: str) -> str:
        return f"to_regclass({self.compile(sa.literal(name))}) IS NOT NULL"

    def refuse_unless(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        # PL/pgSQL plans each IF's expression when it reaches it.
        body = "".join(
            f"  IF NOT ({condition}) THEN\n"
            f"    RAISE EXCEPTION '%', {self._message(message)};\n"
            "  END IF;\n"
            for condition, message in checks
        )
        tag = _dollar_tag(body)
        return [f"DO {tag}\nBEGIN\n{body}END\n{tag};"]

    def run_hint(self) -> str:
        return "psql -X -v ON_ERROR_STOP=1 -d DATABASE -f FILE"

    def delta_type(self, column: sa.Column, family: str) -> sa.types.TypeEngine:
        # As fix.sql's literal: a correction need not fit the column (-40000 to a
        # smallint holding 30000), so the sum is computed in numeric (or double) and
        # only the result is assigned, range-checked; a real's correction in real
        # arithmetic would be rounded before it is added.
        if family in ("integer", "numeric"):
            return sa.Numeric()
        if family == "float":
            return sa.Double()
        return self.temp_type(column, family)

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        conn.execute(
            sa.text("SELECT set_config('lock_timeout', :v, false)"),
            {"v": f"{max(1, int(seconds * 1000))}ms"},
        )

    def try_apply_lock(self, conn: Connection, url: URL, database: str) -> bool:
        self._lock_key = _lock_number(database)
        return bool(
            conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._lock_key}
            ).scalar_one()
        )

    def release_apply_lock(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._lock_key})

    def copy_rows(
        self,
        conn: Connection,
        table: sa.Table,
        families: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> bool:
        # COPY (psycopg 3 only) writes each value as text, read by the column's input
        # function; an INSERT sends it typed and casts. Only values whose two routes
        # are known to meet are copied (see _copies_exactly).
        if conn.dialect.driver != "psycopg" or not rows:
            return False
        if not all(_copies_exactly(f, [r[i] for r in rows]) for i, f in enumerate(families)):
            return False
        preparer = conn.dialect.identifier_preparer
        names = ", ".join(preparer.quote(c.name) for c in table.columns)
        statement = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"
        driver = conn.connection.driver_connection
        assert driver is not None
        dbapi = conn.dialect.loaded_dbapi
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as err:
            # As SQLAlchemy raises a failed statement: one kind of error for callers, and
            # a lost connection invalidated (its transaction then rolls back as a no-op).
            lost = conn.dialect.is_disconnect(err, driver, None)
            if lost:
                conn.invalidate(err)
            raise sa.exc.DBAPIError.instance(
                statement, None, err, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
            ) from err
        return True


# Per type family, the Python types whose COPY text reaches the column exactly as the
# INSERT's parameter does: text is read by the input function either way (psycopg sends
# str untyped), and these numbers convert the same way as their text (numeric to float
# goes through numeric's text too, except that numeric has no -0). Anything else (a
# Decimal for an integer column, which the INSERT's cast rounds; a bool for text; text
# for a boolean, which SQLAlchemy's Boolean refuses) sends the whole batch down the
# INSERT path. tests/test_remediate_copy.py checks each choice against the server.
_COPY_TYPES: dict[str, frozenset[type]] = {
    "integer": frozenset({type(None), str, int}),
    "numeric": frozenset({type(None), str, int, Decimal}),
    "float": frozenset({type(None), str, int, Decimal}),
    "string": frozenset({type(None), str}),
    "boolean": frozenset({type(None), bool}),
    "datetime": frozenset({type(None), str}),
    "date": frozenset({type(None), str}),
    "time": frozenset({type(None), str}),
}


def _dollar_tag(sql: str) -> str:
    """The dollar-quote tag for a PL/pgSQL body: the first of $drift$, $drift1$, ... that
    neither ``sql`` nor the tag without its closing $ occurs in ($drift$ when ``sql``
    has no "$drift" at all, as almost always)."""
    if "$drift" not in sql:
        return "$drift$"
    return next(
        t
        for t in (f"$drift{n or ''}$" for n in itertools.count())
        if t not in sql and t[:-1] not in sql
    )


def _copies_exactly(family: str, values: list[Any]) -> bool:
    """True when COPY stores each of ``values`` exactly as an INSERT would."""
    allowed = _COPY_TYPES.get(family)
    if allowed is None or not {type(v) for v in values} <= allowed:
        return False
    if family == "float":
        return not any(type(v) is Decimal and v.is_zero() and v.is_signed() for v in values)
    return True


class MySQLScript(ScriptDialect):
    name = "mysql"
    client = "mariadb"

    def sa_dialect(self) -> sa.engine.Dialect:
        from sqlalchemy.dialects.mysql import pymysql

        dialect = pymysql.dialect(paramstyle="named")
        dialect.statement_compiler = _slot_compiler(self.name)
        dialect._backslash_escapes = True  # the prologue makes sure the server agrees
        return dialect

    def exact_text_equals(self, column: ColumnElement, value: ColumnElement) -> ColumnElement:
        return _utf8mb4_bytes(column) == _utf8mb4_bytes(value)

    def temporal_value(self, family: str, value: ColumnElement) -> ColumnElement:
        # As text, a DATETIME reads '2026-01-01 10:00:00', never the plan's ISO text:
        # compared byte for byte no guard ever matched. As a DATETIME(6) (TIME(6)) the
        # plan's text keeps its fraction, and equals the column's value of any precision;
        # a TIMESTAMP column compares as a DATETIME in the session's time zone.
        from sqlalchemy.dialects import mysql

        types: dict[str, sa.types.TypeEngine] = {
            "datetime": mysql.DATETIME(fsp=6),
            "date": mysql.DATE(),
            "time": mysql.TIME(fsp=6),
        }
        return sa.cast(value, types[family])

    def session(self, conn: Connection) -> dict[str, Any]:
        # A TIMESTAMP reads (and is written) in the session's time zone: a plan's
        # '2026-01-01 10:00:00' is that instant only in the audit's time zone.
        return {"time_zone": conn.exec_driver_sql("SELECT @@session.time_zone").scalar_one()}

    def session_statements(self, fingerprint: dict[str, Any]) -> list[str]:
        if "time_zone" not in fingerprint:
            return []
        return [f"SET time_zone = {self.compile(sa.literal(str(fingerprint['time_zone'])))};"]

    def set_session(self, conn: Connection, fingerprint: dict[str, Any]) -> None:
        # Strict, as the scripts are: a lax sql_mode clips an out-of-range result (30000 +
        # 10000 in a SMALLINT) to the limit with a warning, which only verify would catch.
        conn.exec_driver_sql(
            "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')"
        )
        if "time_zone" in fingerprint:
            conn.execute(sa.text("SET time_zone = :tz"), {"tz": str(fingerprint["time_zone"])})

    def prologue(self, history: bool = True, checks: Sequence[tuple[str, str]] = ()) -> list[str]:
        # DDL commits implicitly on MariaDB/MySQL: history tables come before the transaction.
        # Strict: without it a result out of the column's range (30000 + 10000 in a
        # SMALLINT) is clipped to the limit with a warning instead of refused.
        return [
            "SET SESSION sql_mode = CONCAT(REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', "
            "''), ',STRICT_ALL_TABLES');",
            "SET NAMES utf8mb4;",
            *super().prologue(history, checks),
        ]

    def refuse_first(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        if not checks:
            return []
        return ["DELIMITER //", *self.refuse_unless(checks), "DELIMITER ;"]

    def server_checks(self, plan_id: str, server: str) -> list[tuple[str, str]]:
        # The identity as remediate.target reads it: MariaDB's @@server_uid, MySQL's
        # @@server_uuid, or neither (the form the audit recorded says which). Compared as
        # bytes: under the connection's case-insensitive collation a server_uid (base64)
        # differing only in case would pass. <=> is false, not NULL, when a side is NULL.
        where = "@@hostname, ':', @@port"
        if server.startswith("mariadb "):
            live = f"CONCAT('mariadb ', {where}, ' server_uid ', @@server_uid)"
        elif " server_uuid " in server:
            live = f"CONCAT('mysql ', {where}, ' server_uuid ', @@server_uuid)"
        else:
            live = f"CONCAT('mysql ', {where})"
        recorded = self.compile(sa.literal(server))
        return [
            (
                f"CAST({live} AS BINARY) <=> CAST({recorded} AS BINARY)",
                self._other_server(plan_id, server),
            )
        ]

    def begin(self) -> list[str]:
        return ["START TRANSACTION;", "DELIMITER //"]

    def plain(self, sql: str) -> str:
        return sql + " //"

    def guarded(self, sql: str, action_id: int) -> str:
        return "\n".join(
            [
                "BEGIN NOT ATOMIC",
                f"  {sql};",
                "  IF ROW_COUNT() <> 1 THEN",
                "    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = "
                f"'drift: guard failed at action {action_id}: a row changed since the audit; "
                "nothing was applied';",
                "  END IF;",
                "END //",
            ]
        )

    def table_exists(self, name: str) -> str:
        return (
            "EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
            f"AND table_name = {self.compile(sa.literal(name))})"
        )

    def refuse_unless(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        # A compound statement resolves each table when it reaches the statement using it.
        lines = ["BEGIN NOT ATOMIC"]
        for condition, message in checks:
            lines += [
                f"  IF NOT ({condition}) THEN",
                f"    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {self._message(message)};",
                "  END IF;",
            ]
        return ["\n".join([*lines, "END //"])]

    def commit(self) -> list[str]:
        return ["DELIMITER ;", "COMMIT;"]

    def run_hint(self) -> str:
        return "mariadb --default-character-set=utf8mb4 DATABASE < FILE"

    def apply_connection(self, conn: Connection) -> Connection:
        # Each statement must see the latest committed rows and events together
        # (REPEATABLE READ would verify against a snapshot older than the rows).
        return conn.execution_options(isolation_level="READ COMMITTED")

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        value = max(1, round(seconds))
        conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = :v"), {"v": value})
        conn.execute(sa.text("SET SESSION lock_wait_timeout = :v"), {"v": value})

    def try_apply_lock(self, conn: Connection, url: URL, database: str) -> bool:
        self._lock_name = f"drift_apply:{hashlib.sha256(database.encode()).hexdigest()[:40]}"
        return (
            conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": self._lock_name}).scalar_one()
            == 1
        )

    def release_apply_lock(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": self._lock_name})

    def delta_type(self, column: sa.Column, family: str) -> sa.types.TypeEngine:
        # Signed, whatever the column: an UNSIGNED copy cannot hold -3 (nor a rolled back
        # +3), and wide enough for the difference of any two of the column's values.
        if family == "integer":
            return sa.Numeric(21, 0)  # 2**64 - 1, BIGINT UNSIGNED's whole range, has 20 digits
        if family == "numeric":
            precision = getattr(column.type, "precision", None) or 64
            scale = getattr(column.type, "scale", None) or 0
            return sa.Numeric(min(precision + 1, 65), scale)
        if family == "float":
            return sa.Double()
        return self.temp_type(column, family)

    def drop_temp(self, conn: Connection, name: str) -> None:
        # Plain DROP TABLE would commit the transaction implicitly.
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE {quoted}")


class SQLiteScript(ScriptDialect):
    name = "sqlite"
    client = "sqlite3"

    def sa_dialect(self) -> sa.engine.Dialect:
        from sqlalchemy.dialects.sqlite import pysqlite

        dialect = pysqlite.dialect()
        dialect.statement_compiler = _slot_compiler(self.name)
        return dialect

    def script_user(self) -> ColumnElement:
        return sa.literal("sqlite3")

    def exact_text_equals(self, column: ColumnElement, value: ColumnElement) -> ColumnElement:
        return column == sa.collate(value, "BINARY")

    def temporal_equals(self, column: ColumnElement, value: ColumnElement) -> ColumnElement:
        # A date is the text the application stored (the plan holds exactly that text,
        # read unparsed): equal when it is that very text.
        return self.exact_text_equals(column, value)

    def prologue(self, history: bool = True, checks: Sequence[tuple[str, str]] = ()) -> list[str]:
        return [".bail on", *super().prologue(history, checks)]

    def begin(self) -> list[str]:
        return ["BEGIN IMMEDIATE;"]

    def guard_setup(self) -> list[str]:
        # changes() cannot be tested outside a trigger: each guard inserts it into a
        # temp table whose trigger rolls the transaction back when it is not 1.
        return [
            "CREATE TEMP TABLE drift_guard (action INTEGER NOT NULL, matched INTEGER NOT NULL);",
            "CREATE TEMP TRIGGER drift_guard_check BEFORE INSERT ON drift_guard "
            f"WHEN NEW.matched <> 1 BEGIN SELECT RAISE(ROLLBACK, '{GUARD_FAILED}'); END;",
        ]

    def guarded(self, sql: str, action_id: int) -> str:
        guard = f"INSERT INTO temp.drift_guard (action, matched) VALUES ({action_id}, changes());"
        return f"{sql};\n{guard}"

    def table_exists(self, name: str) -> str:
        return (
            "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' "
            f"AND name = {self.compile(sa.literal(name))})"
        )

    def refuse_unless(self, checks: Sequence[tuple[str, str]]) -> list[str]:
        # As with the guards: a temp trigger raises; each check's INSERT is prepared only
        # once the ones before it passed (.bail on stops the shell at the first error).
        statements = ["CREATE TEMP TABLE drift_refusal (reason INTEGER NOT NULL);"]
        for number, (condition, message) in enumerate(checks, start=1):
            statements += [
                f"CREATE TEMP TRIGGER drift_refusal_{number} BEFORE INSERT ON drift_refusal "
                f"WHEN NEW.reason = {number} BEGIN SELECT RAISE(ROLLBACK, "
                f"{self._message(message)}); END;",
                f"INSERT INTO temp.drift_refusal (reason) SELECT {number} WHERE NOT ({condition});",
            ]
        return statements

    def run_hint(self) -> str:
        return "sqlite3 DATABASE < FILE"

    def apply_connection(self, conn: Connection) -> Connection:
        return conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")

    def set_lock_timeout(self, conn: Connection, seconds: float) -> None:
        # On the driver's connection: through SQLAlchemy the PRAGMA would first BEGIN
        # IMMEDIATE, and so wait for the very lock whose timeout it sets.
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")

    def try_apply_lock(self, conn: Connection, url: URL, database: str) -> bool:
        # SQLite has no advisory locks: a lock file beside the database.
        path = Path(url.database or "drift.sqlite").resolve()
        self._lock_file = open(f"{path}.drift-apply.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            return False
        return True

    def release_apply_lock(self, conn: Connection) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()

    def temp_type(self, column: sa.Column, family: str) -> sa.types.TypeEngine:
        return FAMILY_TYPES.get(family, sa.String)()


_CONTROL = re.compile(r"([\x00-\x08\x0a-\x1f\x7f])")
_MYSQL_ESCAPES = {"\x00": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z"}


@functools.cache
def _slot_compiler(name: str) -> Any:
    """The statement compiler of a script dialect: the database's own, with slots.

    Built on first use, so that an audit loads only its own database's SQLAlchemy
    dialect (each ~0.01-0.03 s to import), not all three.
    """
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql.psycopg import PGCompiler_psycopg

        class _PostgresSlotCompiler(_SlotRendering, _ExactDecimals, PGCompiler_psycopg):
            pass

        return _PostgresSlotCompiler
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite.base import SQLiteCompiler

        class _SQLiteScriptCompiler(SQLiteCompiler):
            """SQLite's compiler, with control characters in text as char(n).

            SQLite strings have no escapes, and the sqlite3 shell drops a carriage
            return before a line end even inside a literal; char(13) survives.
            """

            def render_literal_value(self, value: Any, type_: sa.types.TypeEngine) -> str:
                if not isinstance(value, str) or not _CONTROL.search(value):
                    return super().render_literal_value(value, type_)
                render = super().render_literal_value
                parts = [
                    f"char({ord(part)})" if _CONTROL.fullmatch(part) else render(part, type_)
                    for part in _CONTROL.split(value)
                    if part
                ]
                return "(" + " || ".join(parts) + ")"

        class _SQLiteSlotCompiler(_SlotRendering, _ExactDecimals, _SQLiteScriptCompiler):
            pass

        return _SQLiteSlotCompiler
    if name == "mysql":
        from sqlalchemy.dialects.mysql.base import MySQLCompiler

        class _MySQLScriptCompiler(MySQLCompiler):
            """MySQL's compiler, with line breaks in text as backslash escapes.

            The mariadb client would otherwise see a carriage return before a line end
            inside a literal as part of the line ending.
            """

            def render_literal_value(self, value: Any, type_: sa.types.TypeEngine) -> str:
                text = super().render_literal_value(value, type_)
                if isinstance(value, str):
                    for raw, escaped in _MYSQL_ESCAPES.items():
                        text = text.replace(raw, escaped)
                return text

        class _MySQLSlotCompiler(_SlotRendering, _ExactDecimals, _MySQLScriptCompiler):
            pass

        return _MySQLSlotCompiler
    raise ValueError(name)


_SCRIPT_DIALECTS: dict[str, type[ScriptDialect]] = {
    cls.name: cls for cls in (PostgresScript, MySQLScript, SQLiteScript)
}
_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}


def _lock_number(database: str) -> int:
    """A stable signed 64-bit advisory lock number for one database."""
    return int(hashlib.sha256(f"drift-apply:{database}".encode()).hexdigest()[:15], 16)


def get_script_dialect(name: str) -> ScriptDialect:
    """The script dialect for a database name, with "did you mean" on a typo."""
    key = _ALIASES.get(name, name)
    try:
        return _SCRIPT_DIALECTS[key]()
    except KeyError:
        raise PlanError(
            f"no remediation scripts for dialect {name!r}"
            + did_you_mean(name, [*_SCRIPT_DIALECTS, *_ALIASES])
        ) from None
