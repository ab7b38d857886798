"""Witnesses: a column rebuilt a second way must agree with its own rebuild.

A column's ``also = [{ stream, fold, value }]`` names other streams that also
say what the column should be (the state an outbox payload announced, the
summed effects of succeeded job runs...). For every key that both the column's
stream and the witness's stream explain, the two rebuilds are compared in the
database (null-safe, exact); each disagreement is a ``witness_disagreement``
finding. A key the witness does not mention is not a disagreement (a missing
announcement is the outbox checks' business).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit.dialects import Dialect
from audit.findings import WITNESS_DISAGREEMENT, Finding, numeric_delta
from audit.rebuild import KeyFilter, build_folds, key_labels
from audit.schema import BoundColumn, BoundEntity, BoundSpec, BoundWitness
from audit.spec import Column, Entity


def run_witnesses(
    conn: Connection,
    bound: BoundSpec,
    entity: BoundEntity,
    dialect: Dialect,
    only_keys: KeyFilter | None = None,
) -> Iterator[Finding]:
    """Every witness disagreement of an entity's columns."""
    for column in entity.columns:
        for index, witness in enumerate(column.also):
            yield from _disagreements(
                conn, bound, entity, column, index, witness, dialect, only_keys
            )


def _as_column(column: BoundColumn, witness: BoundWitness) -> BoundColumn:
    spec = Column(
        entity=column.spec.entity,
        name=f"{column.spec.name}~also",
        stream=witness.spec.stream,
        fold=witness.spec.fold,
        value=str(witness.spec.value) if witness.spec.value is not None else None,
        initial=column.spec.initial,
    )
    return replace(column, spec=spec, value=witness.value, where=witness.where, also=())


def _disagreements(
    conn: Connection,
    bound: BoundSpec,
    entity: BoundEntity,
    column: BoundColumn,
    index: int,
    witness: BoundWitness,
    dialect: Dialect,
    only_keys: KeyFilter | None,
) -> Iterator[Finding]:
    pair = (replace(column, also=()), _as_column(column, witness))
    spec = Entity(
        name=entity.spec.name,
        table=entity.spec.table,
        key=entity.spec.key,
        columns={c.spec.name: c.spec for c in pair},
    )
    folds = build_folds(bound, replace(entity, spec=spec, columns=pair), only_keys, dialect)
    labels = key_labels(len(entity.key))
    own = folds.aggregates[column.spec.stream]
    other = folds.aggregates[witness.spec.stream]
    joined: sa.FromClause = own
    if other is not own:
        joined = joined.join(other, sa.and_(*(own.c[lbl] == other.c[lbl] for lbl in labels)))

    def on(sub):  # type: ignore[no-untyped-def]
        return sa.and_(*(own.c[lbl] == sub.c[lbl] for lbl in labels))

    for _, window in folds.joined_windows():  # a window carrying aggregates is joined above
        joined = joined.outerjoin(window, on(window))
    expected, claimed = folds.expected
    query = (
        sa.select(
            *(dialect.exactly(own.c[lbl]).label(lbl) for lbl in labels),
            dialect.exactly(expected).label("e"),
            dialect.exactly(claimed).label("w"),
            (other.c.t if "t" in other.c else sa.null()).label("t"),
        )
        .select_from(joined)
        .where(dialect.differs(expected, claimed, column.is_text))
        .order_by(*(own.c[lbl] for lbl in labels))
    )
    n = len(labels)
    for row in conn.execute(query, execution_options={"yield_per": 2000}):
        m = row._mapping
        key = tuple(row[:n])
        if any(k is None for k in key):
            continue
        yield Finding(
            entity=entity.spec.name,
            key=key,
            kind=WITNESS_DISAGREEMENT,
            column=column.spec.name,
            expected=m["e"],
            actual=m["w"],
            delta=numeric_delta(m["e"], m["w"]),
            last_event_at=m["t"],
            extra={
                "witness": index,
                "stream": witness.spec.stream,
                "fold": witness.spec.fold,
                "value": str(witness.spec.value) if witness.spec.value is not None else None,
            },
        )
