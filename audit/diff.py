"""The in-database diff: rebuilt state joined to current rows, drift only.

One query per entity: the union of every key that a stream or the current
table knows, left-joined to each fold and to the current rows. The WHERE clause
keeps only drifted keys, so only drift crosses the wire; per-column "differs"
flags are computed by the database too, so Python never re-decides equality.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause, Subquery

from audit.dialects import Dialect
from audit.errors import DataError, SpecError
from audit.findings import (
    ABSENT,
    DUPLICATE_KEY,
    MISMATCH,
    MISSING_ROW,
    NULL_KEY,
    ORPHAN_ROW,
    Finding,
    key_to_json,
    numeric_delta,
)
from audit.rebuild import EntityFolds, KeyFilter, build_folds, key_filter_clause, key_labels
from audit.schema import BoundColumn, BoundEntity, BoundSpec


@dataclass(frozen=True)
class DiffQuery:
    entity: BoundEntity
    select: sa.Select
    streams: tuple[str, ...]
    has_dup: bool
    whole_tables: bool = False
    #: The rows carry tie, NULL-order or non-number flags for :func:`_check_order`.
    checks_rows: bool = False


def _differs(dialect: Dialect, column: BoundColumn, e: ColumnElement, a: ColumnElement):
    spec = column.spec
    if not spec.has_tolerance:
        return dialect.differs(e, a, column.is_text)
    gap = sa.func.abs(e - a)
    outside = [gap > sa.literal(spec.tolerance)]
    if spec.rel_tolerance > 0:
        outside.append(gap > sa.literal(spec.rel_tolerance) * sa.func.abs(e))
        outside.append(gap > sa.literal(spec.rel_tolerance) * sa.func.abs(a))
    return sa.or_(
        sa.and_(e.is_(None), a.is_not(None)),
        sa.and_(e.is_not(None), a.is_(None)),
        sa.and_(e.is_not(None), a.is_not(None), *outside),
    )


def build_diff(
    bound: BoundSpec, entity: BoundEntity, dialect: Dialect, only_keys: KeyFilter | None = None
) -> DiffQuery:
    """The drift query for one entity."""
    folds = build_folds(bound, entity, only_keys, dialect)
    labels = key_labels(len(entity.key))

    has_dup = not entity.key_is_unique
    direct = (
        dialect.full_outer_join
        and entity.key_columns is not None
        and not has_dup
        and (only_keys is None or not dialect.filters_current_rows)
    )
    current = _current_side(entity, only_keys, labels, has_dup, direct)

    if dialect.full_outer_join:
        joined, key_cols = _full_join(entity, folds, current, labels)
    else:
        joined, key_cols = _union_join(bound, entity, folds, current, labels, only_keys)
    if entity.keyed_streams:
        # Stream keys grouped under the entity key's collation may be spelled otherwise
        # than the row they match: a present row is named as it is spelled.
        sides: list[list[ColumnElement]] = [
            [agg.c[lbl] for lbl in labels] for agg in folds.aggregates.values()
        ]
        key_cols = _coalesced([current.keys, *sides])

    explained = sa.or_(*(agg.c.n.is_not(None) for agg in folds.aggregates.values()))
    present = current.is_present
    # A single-precision column is right when it holds the rebuilt value as storing it
    # there rounds it (0.1 + 0.2 in a real column is 0.3).
    differs = [
        _differs(
            dialect,
            column,
            dialect.in_column_type(column.target.type, folds.expected[i]),
            current.values[i],
        )
        for i, column in enumerate(entity.columns)
    ]
    flags = [sa.case((d, 1), else_=0).label(f"d{i}") for i, d in enumerate(differs)]

    cols: list[ColumnElement] = [dialect.exactly(k).label(lbl) for k, lbl in zip(key_cols, labels)]
    aggregates = list(folds.aggregates.values())
    cols += [agg.c.n.label(f"n{j}") for j, agg in enumerate(aggregates)]
    cols += [
        folds.last_event[s].label(f"t{j}")
        for j, s in enumerate(folds.aggregates)
        if s in folds.last_event
    ]
    cols += [
        dialect.stored(_read_expected(dialect, column, e)).label(f"e{i}")
        for i, (column, e) in enumerate(zip(entity.columns, folds.expected))
    ]
    cols += [
        dialect.stored(dialect.exactly(v)).label(f"a{i}") for i, v in enumerate(current.values)
    ]
    cols += [current.present.label("present")]
    cols += ([current.dup.label("dup")] if current.dup is not None else []) + flags
    cols += [f.label(f"tie{i}") for i, f in folds.tie_flags.items()]
    cols += [f.label(f"nonnumeric{i}") for i, f in folds.non_numeric_flags.items()]
    streams = list(folds.aggregates)
    cols += [f.label(f"nullorder{streams.index(s)}") for s, f in folds.null_order_flags.items()]

    drifted = [
        *(k.is_(None) for k in key_cols),
        sa.and_(explained, sa.not_(present)),
        sa.and_(present, sa.not_(explained)),
        sa.and_(explained, present, sa.or_(*differs)),
        *(f == 1 for f in folds.tie_flags.values()),
        *(f > 0 for f in folds.non_numeric_flags.values()),
        *(f > 0 for f in folds.null_order_flags.values()),
    ]
    if current.dup is not None:
        drifted.append(current.dup > 1)
    where = sa.or_(*drifted)
    if direct and only_keys is not None:
        # The table is joined whole; the aggregates are already restricted.
        where = sa.and_(key_filter_clause(key_cols, only_keys), where)
    query = sa.select(*cols).select_from(joined).where(where).order_by(*key_cols)
    return DiffQuery(
        entity=entity,
        select=query,
        streams=tuple(folds.aggregates),
        has_dup=has_dup,
        whole_tables=only_keys is None,
        checks_rows=bool(folds.tie_flags or folds.non_numeric_flags or folds.null_order_flags),
    )


def _read_expected(dialect: Dialect, column: BoundColumn, e: ColumnElement) -> ColumnElement:
    """A rebuilt value as selected, read exactly (:meth:`Dialect.exactly`).

    For a single-precision column an expression of unknown type (SQL text in the spec)
    is read as a double too: on MariaDB it may be a FLOAT, read rounded otherwise.
    """
    unknown = not isinstance(e.type, (sa.Integer, sa.Numeric))
    if unknown and dialect.single_float(column.target.type):
        return dialect.exactly(e, single=True)
    return dialect.exactly(e)


@dataclass(frozen=True)
class _Current:
    """The current rows as one side of the join: where they come from, and their columns."""

    source: FromClause
    keys: list[ColumnElement]
    values: list[ColumnElement]
    present: ColumnElement  # 1 for a current row, NULL when the join found none
    is_present: ColumnElement
    dup: ColumnElement | None


def _current_side(
    entity: BoundEntity,
    only_keys: KeyFilter | None,
    labels: list[str],
    has_dup: bool,
    direct: bool,
) -> _Current:
    """The entity's table joined as it is, or wrapped in a subquery.

    Joined directly, the database can use the table's own key index (SQLite
    cannot index a subquery on the outer side of a FULL JOIN and would scan it
    once per row). A NULL-extended row has NULL key columns; a real row with a
    NULL key is reported as a null key, never as present.
    """
    if direct:
        keys = list(entity.key)
        is_present = sa.and_(*(k.is_not(None) for k in keys))
        present = sa.case((is_present, sa.literal_column("1")))
        values: list[ColumnElement] = [c.target for c in entity.columns]
        return _Current(entity.table, keys, values, present, is_present, None)
    cols: list[ColumnElement] = [k.label(lbl) for k, lbl in zip(entity.key, labels)]
    cols += [c.target.label(f"a{i}") for i, c in enumerate(entity.columns)]
    cols.append(sa.literal_column("1").label("present"))
    if has_dup:
        cols.append(sa.func.count().over(partition_by=list(entity.key)).label("dup"))
    query = sa.select(*cols).select_from(entity.table)
    if only_keys is not None:
        query = query.where(key_filter_clause(entity.key, only_keys))
    sub = query.subquery("cur")
    return _Current(
        sub,
        [sub.c[lbl] for lbl in labels],
        [sub.c[f"a{i}"] for i in range(len(entity.columns))],
        sub.c.present,
        sub.c.present.is_not(None),
        sub.c.dup if has_dup else None,
    )


def _union_join(
    bound: BoundSpec,
    entity: BoundEntity,
    folds: EntityFolds,
    current: _Current,
    labels: list[str],
    only_keys: KeyFilter | None,
) -> tuple[FromClause, list[ColumnElement]]:
    """Every key any side knows, by UNION, left-joined to each side (MySQL/MariaDB).

    A stream's keys are read from its table, not from its aggregate: the
    aggregate (or the first/last window carrying it) has one row per key of the
    stream, the very set the UNION keeps, and naming it twice would compute it
    twice (a window over every stream row just for its keys).
    """
    key_sets = []
    for name in folds.aggregates:
        stream = bound.stream_for(entity, name)
        of_stream = sa.select(*(k.label(lbl) for k, lbl in zip(stream.key, labels)))
        of_stream = of_stream.select_from(stream.table)
        if only_keys is not None:
            of_stream = of_stream.where(key_filter_clause(stream.key, only_keys))
        key_sets.append(of_stream)
    key_sets.append(sa.select(*current.keys))
    keys = sa.union(*key_sets).subquery("keys")

    def on(side: list[ColumnElement]) -> ColumnElement:
        return sa.and_(*(keys.c[lbl] == k for lbl, k in zip(labels, side)))

    joined: FromClause = keys
    for agg in folds.aggregates.values():
        joined = joined.outerjoin(agg, on([agg.c[lbl] for lbl in labels]))
    for _, window in folds.joined_windows():
        joined = joined.outerjoin(window, on([window.c[lbl] for lbl in labels]))
    joined = joined.outerjoin(current.source, on(current.keys))
    return joined, [keys.c[lbl] for lbl in labels]


def _full_join(
    entity: BoundEntity, folds: EntityFolds, current: _Current, labels: list[str]
) -> tuple[FromClause, list[ColumnElement]]:
    """The stream aggregates and the current rows, FULL OUTER JOINed on the key.

    Each side is computed once (a UNION of keys would compute every aggregate
    twice). A window subquery holds a subset of its stream's keys, so it is
    left-joined to that stream's aggregate. In an unmatched row every other
    side is NULL, so the key is the COALESCE of the sides' keys.
    """
    window_of: dict[str, list[Subquery]] = {}
    for index, window in folds.joined_windows():
        window_of.setdefault(entity.columns[index].spec.stream, []).append(window)
    sides: list[list[ColumnElement]] = []
    joined: FromClause | None = None
    for stream, agg in folds.aggregates.items():
        agg_keys: list[ColumnElement] = [agg.c[lbl] for lbl in labels]
        if joined is None:
            joined = agg
        else:
            joined = joined.outerjoin(agg, _coalesced_on(sides, agg_keys), full=True)
        sides.append(agg_keys)
        for window in window_of.get(stream, []):
            joined = joined.outerjoin(
                window, sa.and_(*(agg.c[lbl] == window.c[lbl] for lbl in labels))
            )
    assert joined is not None
    joined = joined.outerjoin(current.source, _coalesced_on(sides, current.keys), full=True)
    sides.append(current.keys)
    return joined, _coalesced(sides)


def _coalesced(sides: list[list[ColumnElement]]) -> list[ColumnElement]:
    if len(sides) == 1:
        return list(sides[0])
    return [sa.func.coalesce(*column) for column in zip(*sides)]


def _coalesced_on(sides: list[list[ColumnElement]], other: list[ColumnElement]) -> ColumnElement:
    return sa.and_(*(k == o for k, o in zip(_coalesced(sides), other)))


def run_diff(
    conn: Connection, bound: BoundSpec, diff: DiffQuery, dialect: Dialect | None = None
) -> Iterator[Finding]:
    """Execute a diff query and turn each drifted row into findings.

    With ``dialect``, a diff over whole tables (no ``only_keys``) runs under
    the dialect's :meth:`~audit.dialects.Dialect.whole_table_settings`, one
    restricted to some keys under its
    :meth:`~audit.dialects.Dialect.some_keys_settings`.
    """
    before: list[str] = []
    after: list[str] = []
    if dialect is not None:
        settings = dialect.whole_table_settings if diff.whole_tables else dialect.some_keys_settings
        before, after = settings()
    for statement in before:
        _set(conn, statement)
    # Per statement: Connection.execution_options() would change the caller's connection.
    result = conn.execute(
        diff.select, execution_options={"stream_results": True, "yield_per": 2000}
    )
    try:
        yield from _findings(conn, bound, diff, result)
    finally:
        result.close()
    # Only on success: after a failure the audit ends, and a lost connection would only
    # raise again here, hiding the first error.
    for statement in after:
        _set(conn, statement)


def _set(conn: Connection, statement: str) -> None:
    """A session setting (a plain cursor: the diff's own server-side cursor is per statement).

    Through SQLAlchemy, so a failure is a DBAPIError that callers turn into a one-line error.
    """
    conn.exec_driver_sql(statement)


def _in_value_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A duplicated key's rows in the order of their values, column by column (NULL last).

    The query orders by key only, so the database may return one key's rows in any
    order: sorted, the same table gives the same finding every time.
    """
    try:
        return sorted(rows, key=lambda row: [(v is None, v) for v in row.values()])
    except TypeError:  # values of one column that do not compare (an exotic type)
        return rows


def _findings(
    conn: Connection, bound: BoundSpec, diff: DiffQuery, result: Any
) -> Iterator[Finding]:
    entity = diff.entity
    names = [c.spec.name for c in entity.columns]
    n_keys = len(entity.key)
    null_key_seen = False
    pending_dup: list[Row[Any]] = []

    def flush_dup() -> Iterator[Finding]:
        if not pending_dup:
            return
        first = pending_dup[0]
        yield Finding(
            entity=entity.spec.name,
            key=tuple(first[:n_keys]),
            kind=DUPLICATE_KEY,
            expected=_expected_row(first, names) if _explained(first, diff) else ABSENT,
            actual=_in_value_order(
                [{n: r._mapping[f"a{i}"] for i, n in enumerate(names)} for r in pending_dup]
            ),
            last_event_at=_last_event(first, diff),
            extra={"rows": len(pending_dup)},
        )
        pending_dup.clear()

    for row in result:
        m = row._mapping
        key = tuple(row[:n_keys])
        if any(k is None for k in key):
            null_key_seen = True
            continue
        if diff.checks_rows:
            _check_order(m, entity, bound)
        if diff.has_dup and (m["dup"] or 0) > 1:
            if pending_dup and tuple(pending_dup[0][:n_keys]) != key:
                yield from flush_dup()
            pending_dup.append(row)
            continue
        yield from flush_dup()
        explained = _explained(row, diff)
        present = m["present"] is not None
        last_at = _last_event(row, diff)
        if explained and not present:
            yield Finding(
                entity=entity.spec.name,
                key=key,
                kind=MISSING_ROW,
                expected=_expected_row(row, names),
                last_event_at=last_at,
            )
        elif present and not explained:
            yield Finding(
                entity=entity.spec.name,
                key=key,
                kind=ORPHAN_ROW,
                actual={n: m[f"a{i}"] for i, n in enumerate(names)},
            )
        elif explained and present:
            for i, name in enumerate(names):
                if m[f"d{i}"] == 1:
                    expected, actual = m[f"e{i}"], m[f"a{i}"]
                    yield Finding(
                        entity=entity.spec.name,
                        key=key,
                        kind=MISMATCH,
                        column=name,
                        expected=expected,
                        actual=actual,
                        delta=numeric_delta(expected, actual),
                        last_event_at=last_at,
                    )
    yield from flush_dup()
    if null_key_seen:
        yield from _null_key_findings(conn, bound, entity, diff)


def _explained(row: Row[Any], diff: DiffQuery) -> bool:
    m = row._mapping
    return any(m[f"n{j}"] is not None for j in range(len(diff.streams)))


def _expected_row(row: Row[Any], names: list[str]) -> dict[str, Any]:
    m = row._mapping
    return {n: m[f"e{i}"] for i, n in enumerate(names)}


def _last_event(row: Row[Any], diff: DiffQuery) -> Any:
    m = row._mapping
    times = [m[f"t{j}"] for j in range(len(diff.streams)) if m.get(f"t{j}") is not None]
    try:
        return max(times) if times else None
    except TypeError:  # mixed types across streams
        return max(str(t) for t in times)


def _check_order(m: Any, entity: BoundEntity, bound: BoundSpec) -> None:
    """first/last need a total order: ties or NULLs in order_by are spec errors."""
    key = [m[lbl] for lbl in key_labels(len(entity.key))]
    for i, column in enumerate(entity.columns):
        if m.get(f"tie{i}") == 1:
            stream = bound.streams[column.spec.stream].spec
            raise SpecError(
                f"{stream.section}.order_by: rows of key {key_to_json(key)} tie on "
                f"{', '.join(stream.order_by)}; {column.spec.section} (fold = "
                f"{column.spec.fold!r}) needs a total order"
            )
    for i, column in enumerate(entity.columns):
        bad = m.get(f"nonnumeric{i}") or 0
        if bad > 0:
            raise DataError(
                f"{column.spec.section}.value: {bad} row(s) of key {key_to_json(key)} in stream "
                f"{column.spec.stream!r} are not numbers; fold 'sum' would count them as 0"
            )
    for j, name in enumerate(dict.fromkeys(c.spec.stream for c in entity.columns)):
        nulls = m.get(f"nullorder{j}") or 0
        if nulls > 0:
            stream = bound.streams[name].spec
            raise SpecError(
                f"{stream.section}.order_by: {nulls} row(s) of key "
                f"{key_to_json(key)} have a NULL order_by; first/last folds need a total order"
            )


def _null_key_findings(
    conn: Connection, bound: BoundSpec, entity: BoundEntity, diff: DiffQuery
) -> Iterator[Finding]:
    """Rows whose key is NULL belong to no entity: count them, per table."""
    sources = [(f"streams.{s}", bound.streams[s].table, bound.streams[s].key) for s in diff.streams]
    sources.append((entity.spec.section, entity.table, entity.key))
    for section, table, key in sources:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(table).where(sa.or_(*(k.is_(None) for k in key)))
        ).scalar_one()
        if count:
            yield Finding(
                entity=entity.spec.name,
                key=tuple(None for _ in key),
                kind=NULL_KEY,
                actual={"table": table.name, "section": section, "rows": count},
                extra={"rows": count, "table": table.name},
            )
