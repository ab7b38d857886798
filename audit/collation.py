"""Stream keys grouped and matched under the entity key's collation.

The entity's key says what one entity is (its uniqueness); a stream's key values
refer to entities. When a stream key column and the entity key column it stands
for compare text differently (MariaDB ``utf8mb4_general_ci`` against
``utf8mb4_bin``, SQLite ``NOCASE`` against ``BINARY``, a nondeterministic ICU
collation against a deterministic one on PostgreSQL), the stream's keys are
grouped, filtered and joined under the **entity key's** collation: against a
binary entity key ``'a'`` and ``'A'`` are two entities whose events fold apart;
against a case-insensitive one they are one entity.

Each key part's collation is asked of the database (:func:`key_collations`), so
a key given as an expression counts too. Where both sides agree, nothing changes
(no ``COLLATE``, the same SQL and index use). Where they differ, the stream key
part becomes ``key COLLATE <entity collation>`` (:class:`KeyCollation`), and a
group of stream keys is spelled as its least spelling in binary order (the
spelling a missing-row finding shows). What cannot be treated exactly (MariaDB
key columns of different character sets) is refused with a :class:`SpecError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement, quoted_name
from sqlalchemy.sql.functions import FunctionElement

from audit.errors import SpecError


@dataclass(frozen=True)
class Collation:
    """A key part's collation as the database names it (ready to write after COLLATE)."""

    name: str
    #: MariaDB/MySQL: the character set; a COLLATE must name one of its collations.
    charset: str | None = None
    #: PostgreSQL: a deterministic collation equates only identical text.
    deterministic: bool = False


@dataclass(frozen=True)
class KeyCollation:
    """One stream key part, grouped and matched under the entity key part's collation."""

    dialect: str
    collation: Collation

    def group(self, expr: ColumnElement) -> ColumnElement:
        """``expr COLLATE <entity collation>``: what GROUP BY, PARTITION BY and joins use."""
        return sa.collate(expr, quoted_name(self.collation.name, quote=False))

    def spelling(
        self, expr: ColumnElement, partition: Sequence[ColumnElement] | None = None
    ) -> ColumnElement:
        """The least spelling (in binary order) of a group's key values, under the
        entity's collation: an aggregate, or a window over ``partition``."""
        least: ColumnElement = sa.func.min(self._binary(expr))
        if partition is not None:
            least = sa.func.min(self._binary(expr)).over(partition_by=list(partition))
        if self.dialect == "mysql":
            least = _text_of_bytes(least, self.collation.charset or "utf8mb4")
        return self.group(least)

    def _binary(self, expr: ColumnElement) -> ColumnElement:
        if self.dialect == "mysql":
            return _bytes_of(expr)
        if self.dialect == "postgresql":
            return sa.collate(expr, quoted_name('"C"', quote=False))
        return sa.collate(expr, "BINARY")


class _bytes_of(FunctionElement):  # noqa: N801 - a SQL function
    """MySQL: a text value's bytes (compared byte by byte, no padding)."""

    inherit_cache = True
    type = sa.LargeBinary()
    name = "bytes_of"


@compiles(_bytes_of, "mysql")
def _compile_bytes_of(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (arg,) = list(element.clauses)
    return f"CAST({compiler.process(arg, **kw)} AS BINARY)"


class _text_of_bytes(ColumnElement[str]):  # noqa: N801 - a SQL function
    """MySQL: bytes read back as text of a character set."""

    inherit_cache = False
    type = sa.String()

    def __init__(self, expr: ColumnElement, charset: str) -> None:
        self.expr = expr
        self.charset = charset


@compiles(_text_of_bytes, "mysql")
def _compile_text_of_bytes(element, compiler, **kw):  # type: ignore[no-untyped-def]
    return f"CONVERT({compiler.process(element.expr, **kw)} USING {element.charset})"


def match_keys(
    table: sa.FromClause, key: Sequence[ColumnElement], keys: Sequence[tuple], label: str
) -> tuple[sa.FromClause, ColumnElement]:
    """``table`` joined to the asked ``keys`` on ``key`` (a stream key grouped under the
    entity key's collation), and the column that says which asked key a row belongs to
    (its position in ``keys``): rows of one entity may be spelled otherwise than its key.
    """
    asked = sa.union_all(
        *(
            sa.select(
                sa.literal(n).label(label),
                *(sa.literal(v).label(f"w{i}") for i, v in enumerate(value)),
            )
            for n, value in enumerate(keys)
        )
    ).subquery("drift_asked")
    on = sa.and_(*(k == asked.c[f"w{i}"] for i, k in enumerate(key)))
    return table.join(asked, on), asked.c[label]


#: One key part to ask about: the table (or FROM clause) and the expression over it.
Asked = tuple[sa.FromClause, ColumnElement]


def is_not_text(expr: ColumnElement) -> bool:
    """A plain column whose type is not text: it has no collation to ask about."""
    return isinstance(expr, sa.Column) and not isinstance(expr.type, sa.String)


def key_collations(conn: Connection, asked: Sequence[Asked]) -> list[Collation | None]:
    """Each asked key part's collation (None where it is not text), in one statement
    (three on PostgreSQL), whatever the tables hold."""
    if not asked:
        return []
    name = conn.dialect.name
    if name == "postgresql":
        return _postgresql(conn, asked)
    if name in ("mysql", "mariadb"):
        return _mysql(conn, asked)
    if name == "sqlite":
        return _sqlite(conn, asked)
    return [None for _ in asked]


def _typed_null(table: sa.FromClause, expr: ColumnElement) -> ColumnElement:
    """``(SELECT expr FROM table LIMIT 0)``: NULL, of the expression's type and collation."""
    return sa.select(expr).select_from(table).limit(0).scalar_subquery()


def _postgresql(conn: Connection, asked: Sequence[Asked]) -> list[Collation | None]:
    found: list[Collation | None] = [None for _ in asked]
    # pg_collation_for() refuses a type without collations (integer): ask the type first.
    types = sa.table("pg_type", sa.column("oid"), sa.column("typcollation"), schema="pg_catalog")
    collatable = [
        sa.select(types.c.typcollation != 0)
        .where(types.c.oid == sa.func.pg_typeof(_typed_null(table, expr)))
        .scalar_subquery()
        for table, expr in asked
    ]
    flags = conn.execute(sa.select(*collatable)).one()
    ask = [i for i, flag in enumerate(flags) if flag]
    if not ask:
        return found
    # The name as COLLATE takes it (quoted, schema-qualified when not on the search_path),
    # and whether the collation is deterministic.
    names = conn.execute(
        sa.select(*(sa.func.pg_collation_for(_typed_null(*asked[i])) for i in ask))
    ).one()
    rows = conn.execute(
        sa.text(
            "SELECT c, (SELECT collisdeterministic FROM pg_catalog.pg_collation "
            "WHERE oid = CAST(c AS regcollation)) FROM unnest(CAST(:names AS text[])) AS c"
        ),
        {"names": [n for n in names if n is not None]},
    ).all()
    deterministic: dict[str, bool] = {name: flag for name, flag in rows}
    for i, name in zip(ask, names):
        if name is not None:
            found[i] = Collation(name=name, deterministic=bool(deterministic.get(name)))
    return found


def _inner(conn: Connection, table: sa.FromClause, expr: ColumnElement) -> str:
    """``SELECT expr AS e FROM table WHERE false``, compiled for the driver (percent
    signs doubled for PyMySQL), to embed in a statement run by ``exec_driver_sql``.

    Compiled alone and embedded, the probe costs ~1 ms; as one Core statement over
    freshly reflected tables (a new statement for the compiled cache on every audit)
    it cost ~10 ms of compiling per SQLite audit.
    """
    inner = sa.select(expr.label("e")).select_from(table).where(sa.false())
    return str(inner.compile(dialect=conn.dialect))


def _mysql(conn: Connection, asked: Sequence[Asked]) -> list[Collation | None]:
    columns = []
    for table, expr in asked:
        typed = f"({_inner(conn, table, expr)} LIMIT 0)"
        columns += [f"COLLATION({typed})", f"CHARSET({typed})"]
    row = conn.exec_driver_sql("SELECT " + ", ".join(columns)).one()
    found: list[Collation | None] = []
    for n in range(len(asked)):
        collation, charset = row[2 * n], row[2 * n + 1]
        usable = collation and charset and charset != "binary"
        found.append(Collation(name=collation, charset=charset) if usable else None)
    return found


def _sqlite(conn: Connection, asked: Sequence[Asked]) -> list[Collation | None]:
    """SQLite names no collation; a UNION (which dedups under its first column's
    collation) of the expression's type with two texts tells the built-in ones apart."""
    probes = []
    for table, expr in asked:
        inner = _inner(conn, table, expr)
        for a, b in (("A", "a"), ("a", "a ")):
            probes.append(f"(SELECT count(*) FROM ({inner} UNION SELECT '{a}' UNION SELECT '{b}'))")
    row = conn.exec_driver_sql("SELECT " + ", ".join(probes)).one()
    found: list[Collation | None] = []
    for n in range(len(asked)):
        nocase, rtrim = row[2 * n] == 1, row[2 * n + 1] == 1
        if nocase and rtrim:
            raise SpecError(
                "a key's collation ignores both case and trailing spaces (not built in)"
            )
        found.append(Collation("NOCASE" if nocase else "RTRIM" if rtrim else "BINARY"))
    return found


def stream_key_collations(
    dialect: str,
    stream_section: str,
    stream_parts: Sequence[Collation | None],
    entity_section: str,
    entity_parts: Sequence[Collation | None],
) -> tuple[KeyCollation | None, ...] | None:
    """How each stream key part is grouped for the entity; None when no part needs a COLLATE.

    A part needs one when both sides are text and their equalities may differ: their
    collations differ (on PostgreSQL only when one of them is nondeterministic: two
    deterministic collations both equate only identical text).
    """
    parts: list[KeyCollation | None] = []
    for i, (mine, theirs) in enumerate(zip(stream_parts, entity_parts)):
        if mine is None or theirs is None or mine.name == theirs.name:
            parts.append(None)
            continue
        if dialect == "postgresql" and mine.deterministic and theirs.deterministic:
            parts.append(None)
            continue
        if dialect == "mysql" and mine.charset != theirs.charset:
            raise SpecError(
                f"{stream_section}.key[{i}]: its character set {mine.charset} ({mine.name}) is "
                f"not that of {entity_section}.key[{i}], {theirs.charset} ({theirs.name}); drift "
                "groups a stream's keys under the entity key's collation and cannot do so "
                "exactly across character sets: give the stream key as an expression in the "
                f"entity's, e.g. CONVERT(col USING {theirs.charset}) COLLATE {theirs.name}"
            )
        parts.append(KeyCollation(dialect, theirs))
    return tuple(parts) if any(p is not None for p in parts) else None
