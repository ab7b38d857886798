"""Rebuilding expected state: each fold compiled to SQL with SQLAlchemy Core.

For one entity, every stream it reads becomes one GROUP BY subquery keyed by
the entity key (``k0``, ``k1``...), holding the sum/count/min/max columns, a
constant ``n`` (its presence says "this stream explains the key") and the
time of its last row. Each first/last column becomes a
window subquery that keeps the first or last row per key in ``order_by`` order.

Semantics (also in docs/spec.md):

* ``where`` filters the rows that contribute to a column; a key is explained
  by a stream if the stream has any row for it, filtered or not.
* sum/count: ``initial`` (default 0) plus the fold; NULL values are skipped.
* min/max: the fold, or ``initial`` when no row contributes.
* first/last: the value of the first/last contributing row (even if NULL),
  or ``initial`` when no row contributes. Ties in ``order_by`` at that row are
  an error: the order must be total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Subquery

from audit.dialects import Dialect, in_list
from audit.schema import BoundColumn, BoundEntity, BoundSpec, BoundStream

#: Keys to audit: a list of key tuples, or a SELECT returning the key columns.
KeyFilter = Sequence[tuple[Any, ...]] | sa.Select | sa.CompoundSelect


@dataclass
class EntityFolds:
    """The subqueries that rebuild one entity, and how to read them."""

    aggregates: dict[str, Subquery] = field(default_factory=dict)  # by stream name
    windows: dict[int, Subquery] = field(default_factory=dict)  # by column index
    expected: list[ColumnElement] = field(default_factory=list)  # by column index
    tie_flags: dict[int, ColumnElement] = field(default_factory=dict)  # by column index
    null_order_flags: dict[str, ColumnElement] = field(default_factory=dict)  # by stream
    non_numeric_flags: dict[int, ColumnElement] = field(default_factory=dict)  # by column
    last_event: dict[str, ColumnElement] = field(default_factory=dict)  # by stream

    def joined_windows(self) -> list[tuple[int, Subquery]]:
        """The window subqueries joined beside the aggregates (not those carrying them)."""
        carriers = {id(a) for a in self.aggregates.values()}
        return [(i, w) for i, w in self.windows.items() if id(w) not in carriers]


def key_labels(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


def key_filter_clause(key: Sequence[ColumnElement], keys: KeyFilter) -> ColumnElement:
    """``key IN (...)``: restricts an audit to some keys (verify, incremental)."""
    if isinstance(keys, (sa.Select, sa.CompoundSelect)):
        return (key[0] if len(key) == 1 else sa.tuple_(*key)).in_(keys)
    if len(key) == 1:
        return in_list(key[0], [k[0] for k in keys])
    return sa.tuple_(*key).in_([tuple(k) for k in keys])


def _key_outputs(stream: BoundStream, window: bool = False) -> list[ColumnElement]:
    """The key columns an aggregate (or, with ``window``, a window's rows) carries.

    A part grouped under the entity key's collation (audit/collation.py) is spelled
    the one way of its group that sorts first in binary order, so a missing row's
    key does not depend on which row the database met first.
    """
    if stream.key_collations is None:
        return list(stream.key)
    partition = list(stream.key) if window else None
    return [
        key if part is None else part.spelling(spelled, partition)
        for key, spelled, part in zip(stream.key, stream.spec_key, stream.key_collations)
    ]


#: ``n``: a key's row in a stream's aggregate says "this stream explains the key".
_EXPLAINED: ColumnElement = sa.literal_column("1").label("n")


def _contributing(column: BoundColumn, expr: ColumnElement) -> ColumnElement:
    if column.where is None:
        return expr
    return sa.case((column.where, expr))


def _stream_aggregates(
    stream: BoundStream,
    columns: list[tuple[int, BoundColumn]],
    first_last: bool,
    with_time: bool,
    dialect: Dialect,
) -> list[tuple[Any, str]]:
    """(aggregate function, label) pairs: the folds, ``bad``, ``t`` and ``null_order``."""
    aggregates: list[tuple[Any, str]] = []
    for index, column in columns:
        fold = column.spec.fold
        if fold == "count":
            arg = column.value if column.value is not None else sa.literal_column("1")
            aggregates.append((sa.func.count(_contributing(column, arg)), f"c{index}"))
        else:
            assert column.value is not None
            func = getattr(sa.func, fold)
            aggregates.append((func(_contributing(column, column.value)), f"c{index}"))
            bad = dialect.non_numeric(column.value) if fold == "sum" else None
            if bad is not None:
                where = column.where if column.where is not None else sa.true()
                flag = sa.case((sa.and_(bad, where), 1), else_=0)
                aggregates.append((sa.func.sum(flag), f"bad{index}"))
    if with_time and stream.time is not None:
        aggregates.append((sa.func.max(stream.time), "t"))
    if first_last and not stream.order_is_not_null:
        nulls = sa.or_(*(o.is_(None) for o in stream.order_by))
        aggregates.append((sa.func.sum(sa.case((nulls, 1), else_=0)), "null_order"))
    return aggregates


def _aggregate(
    stream: BoundStream,
    columns: list[tuple[int, BoundColumn]],
    first_last: bool,
    only_keys: KeyFilter | None,
    alias: str,
    with_time: bool,
    dialect: Dialect,
) -> Subquery:
    labels = key_labels(len(stream.key))
    selected: list[ColumnElement] = [k.label(lbl) for k, lbl in zip(_key_outputs(stream), labels)]
    selected += [
        func.label(lbl)
        for func, lbl in _stream_aggregates(stream, columns, first_last, with_time, dialect)
    ]
    selected.append(_EXPLAINED)
    query = sa.select(*selected).select_from(stream.table).group_by(*stream.key)
    if only_keys is not None:
        query = query.where(key_filter_clause(stream.key, only_keys))
    return query.subquery(alias)


def _window(
    stream: BoundStream,
    index: int,
    column: BoundColumn,
    only_keys: KeyFilter | None,
    carried: list[tuple[Any, str]] | None = None,
    alias: str | None = None,
) -> Subquery:
    """The first or last contributing row per key, with a tie flag.

    The tie flag (a ``lead()`` over the same window) is left out when a unique
    constraint within ``order_by`` already rules ties out. ``carried``
    aggregates are computed over each key's whole partition in the same pass,
    so a stream that needs a sort for this window is read once, not twice.
    """
    labels = key_labels(len(stream.key))
    descending = column.spec.fold == "last"
    order = [o.desc() if descending else o.asc() for o in stream.order_by]
    window: dict[str, Any] = {"partition_by": list(stream.key), "order_by": order}
    keys = _key_outputs(stream, window=True)
    inner_cols: list[ColumnElement] = [k.label(lbl) for k, lbl in zip(keys, labels)]
    assert column.value is not None, "first/last folds have a value"
    inner_cols.append(column.value.label("v"))
    inner_cols.append(sa.func.row_number().over(**window).label("rn"))
    check_ties = not stream.order_is_unique
    if check_ties:
        for i, o in enumerate(stream.order_by):
            inner_cols.append(o.label(f"o{i}"))
            inner_cols.append(sa.func.lead(o).over(**window).label(f"next{i}"))
    for func, lbl in carried or []:
        inner_cols.append(func.over(partition_by=list(stream.key)).label(lbl))
    inner = sa.select(*inner_cols).select_from(stream.table)
    if column.where is not None:
        inner = inner.where(column.where)
    if only_keys is not None:
        inner = inner.where(key_filter_clause(stream.key, only_keys))
    sub = inner.subquery(f"win{index}")
    outer_cols: list[ColumnElement] = [*(sub.c[lbl] for lbl in labels), sub.c.v]
    if check_ties:
        tie = sa.and_(*(sub.c[f"o{i}"] == sub.c[f"next{i}"] for i in range(len(stream.order_by))))
        outer_cols.append(sa.case((tie, 1), else_=0).label("tie"))
    outer_cols.append(sa.literal_column("1").label("hit"))
    if carried is not None:
        outer_cols += [sub.c[lbl] for _, lbl in carried]
        outer_cols.append(_EXPLAINED)
    outer = sa.select(*outer_cols).where(sub.c.rn == 1)
    return outer.subquery(alias or f"fl{index}")


def _pickable(stream: BoundStream) -> bool:
    """One unique NOT NULL ``order_by`` column: its max (min) per key names one row."""
    return (
        len(stream.order_by) == 1
        and isinstance(stream.order_by[0], sa.Column)
        and stream.order_is_unique
        and stream.order_is_not_null
    )


def _picked(
    stream: BoundStream,
    index: int,
    column: BoundColumn,
    only_keys: KeyFilter | None,
    carried: list[tuple[Any, str]] | None = None,
    alias: str | None = None,
) -> Subquery:
    """What :func:`_window` returns, from the row whose order value is the key's max
    (``last``) or min (``first``), joined back by that value (see ``_pickable``).

    ``carried`` aggregates come from the same GROUP BY as the pick. There are no ties
    to flag (the column is unique) and no NULL order values to place.
    """
    labels = key_labels(len(stream.key))
    order = stream.order_by[0]
    pick = sa.func.max(order) if column.spec.fold == "last" else sa.func.min(order)
    # The value is evaluated beside this subquery: its names must not be ones a spec's
    # SQL expression could mean as the stream's own columns (k0, t, ...).
    keys = _key_outputs(stream)
    inner = [*((k, lbl) for k, lbl in zip(keys, labels)), (pick, "pick"), *(carried or [])]
    picks = sa.select(*(e.label(f"drift_{lbl}") for e, lbl in inner))
    picks = picks.select_from(stream.table).group_by(*stream.key)
    if column.where is not None:
        picks = picks.where(column.where)
    if only_keys is not None:
        picks = picks.where(key_filter_clause(stream.key, only_keys))
    sub = picks.subquery(f"pick{index}")

    def out(lbl: str) -> ColumnElement:
        return sub.c[f"drift_{lbl}"].label(lbl)

    assert column.value is not None, "first/last folds have a value"
    outer_cols: list[ColumnElement] = [*(out(lbl) for lbl in labels), column.value.label("v")]
    outer_cols.append(sa.literal_column("1").label("hit"))
    if carried is not None:
        outer_cols += [out(lbl) for _, lbl in carried]
        outer_cols.append(_EXPLAINED)
    joined = stream.table.join(sub, order == sub.c.drift_pick)
    outer = sa.select(*outer_cols).select_from(joined)
    return outer.subquery(alias or f"fl{index}")


def _time_by_lookup(stream: BoundStream) -> bool:
    """Look the last event time up per drifted key instead of aggregating it for every key.

    Only when an index leads with the key (a lookup is cheap) and the key and
    time are plain columns (so the lookup can use its own alias of the table).
    """
    return (
        stream.time is not None
        and stream.key_is_indexed
        and isinstance(stream.time, sa.Column)
        and all(isinstance(k, sa.Column) for k in stream.key)
    )


def _time_lookup(stream: BoundStream, agg: Subquery, position: int) -> ColumnElement:
    """``(SELECT max(time) FROM stream WHERE key = agg.key)``, evaluated per output row."""
    alias = stream.table.alias(f"tq{position}")
    labels = key_labels(len(stream.key))
    match = [alias.c[k.name] == agg.c[lbl] for k, lbl in zip(stream.key, labels)]  # type: ignore[attr-defined]
    return (
        sa.select(sa.func.max(alias.c[stream.time.name]))  # type: ignore[union-attr]
        .where(*match)
        .correlate_except(alias)
        .scalar_subquery()
    )


def build_folds(
    bound: BoundSpec, entity: BoundEntity, only_keys: KeyFilter | None, dialect: Dialect
) -> EntityFolds:
    """Compile every fold of an entity into subqueries.

    Per stream: one GROUP BY subquery, and one window subquery per first/last
    column. When a first/last column has no ``where``, its window carries the
    stream's aggregates instead (one pass over the stream, no GROUP BY).
    """
    folds = EntityFolds()
    by_stream: dict[str, list[tuple[int, BoundColumn]]] = {}
    for index, column in enumerate(entity.columns):
        by_stream.setdefault(column.spec.stream, []).append((index, column))
    for position, (stream_name, columns) in enumerate(by_stream.items()):
        stream = bound.stream_for(entity, stream_name)
        aggregated = [(i, c) for i, c in columns if c.spec.fold not in ("first", "last")]
        windowed = [(i, c) for i, c in columns if c.spec.fold in ("first", "last")]
        lookup = _time_by_lookup(stream)
        carrier = next(((i, c) for i, c in windowed if c.where is None), None)
        first_last = _picked if dialect.picks_first_last and _pickable(stream) else _window
        if carrier is not None:
            carried = _stream_aggregates(stream, aggregated, True, not lookup, dialect)
            agg = first_last(stream, carrier[0], carrier[1], only_keys, carried, f"agg{position}")
            folds.windows[carrier[0]] = agg
        else:
            agg = _aggregate(
                stream, aggregated, bool(windowed), only_keys, f"agg{position}", not lookup, dialect
            )
        folds.aggregates[stream_name] = agg
        for index, _column in aggregated:
            if f"bad{index}" in agg.c:
                folds.non_numeric_flags[index] = agg.c[f"bad{index}"]
        if "null_order" in agg.c:
            folds.null_order_flags[stream_name] = agg.c.null_order
        if "t" in agg.c:
            folds.last_event[stream_name] = agg.c.t
        elif lookup:
            folds.last_event[stream_name] = _time_lookup(stream, agg, position)
        for index, column in windowed:
            if index not in folds.windows:
                folds.windows[index] = first_last(stream, index, column, only_keys)
    for index, column in enumerate(entity.columns):
        folds.expected.append(_expected(folds, index, column, exact=dialect.name != "sqlite"))
        if index in folds.windows and "tie" in folds.windows[index].c:
            folds.tie_flags[index] = folds.windows[index].c.tie
    return folds


def _expected(folds: EntityFolds, index: int, column: BoundColumn, exact: bool) -> ColumnElement:
    fold = column.spec.fold
    initial = column.spec.initial
    if fold in ("sum", "count"):
        agg = folds.aggregates[column.spec.stream].c[f"c{index}"]
        expr: ColumnElement = sa.func.coalesce(agg, sa.literal_column("0"))
        if initial:
            expr = expr + _initial(initial, agg.type, exact)
        return expr
    if fold in ("min", "max"):
        agg = folds.aggregates[column.spec.stream].c[f"c{index}"]
        return agg if initial is None else sa.func.coalesce(agg, _initial(initial, agg.type, exact))
    window = folds.windows[index]
    if initial is None:
        return window.c.v
    return sa.case(
        (window.c.hit.is_(None), _initial(initial, window.c.v.type, exact)), else_=window.c.v
    )


def _initial(initial: Any, folded: sa.types.TypeEngine[Any], exact: bool) -> ColumnElement:
    """``initial`` as a literal beside a folded value of type ``folded``.

    TOML has no decimals: ``initial = 0.10`` arrives as a float, and bound as one
    (a double) it turns the sum or coalesce of an exact NUMERIC/DECIMAL value into
    floating point, where 0.10 + 1000000.07 is 1000000.1699999999 and a 1e-9 drift
    of a NUMERIC(30,9) column disappears. Where the database has exact decimals
    (``exact``: not SQLite, whose arithmetic is floating point anyway), a float is
    bound as the decimal it was written as (its shortest repr), in the folded
    value's type (or NUMERIC beside an expression of unknown type).
    """
    if exact and isinstance(initial, float) and math.isfinite(initial):
        typed = sa.Numeric() if isinstance(folded, sa.types.NullType) else folded
        return sa.literal(Decimal(repr(initial)), typed)
    return sa.literal(initial)
