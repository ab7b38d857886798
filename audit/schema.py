"""Binding a spec to the live schema: reflect tables, resolve names and expressions.

A spec entry that is exactly (or, failing that, case-insensitively and
uniquely) the name of a reflected column becomes that Column, so odd names are
quoted correctly by SQLAlchemy. Anything else is a SQL expression in the
target's dialect, written by a trusted operator, and is checked by asking the
database to plan it (``SELECT expr FROM t WHERE false``) before the audit runs.
A bare word that is not a column is reported as a missing column, with a
"did you mean".
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from audit.collation import (
    Asked,
    KeyCollation,
    is_not_text,
    key_collations,
    stream_key_collations,
)
from audit.database import describe_db_error
from audit.dialects import get_dialect
from audit.errors import DatabaseError, DataError, SpecError, did_you_mean
from audit.spec import Column, Entity, JobLog, JsonRef, Outbox, Ref, Spec, Stream, Witness

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_SQL_WORDS = {"null", "true", "false", "current_timestamp", "current_date", "current_time"}


@dataclass(frozen=True)
class BoundStream:
    spec: Stream
    table: sa.Table
    key: tuple[ColumnElement, ...]
    order_by: tuple[ColumnElement, ...]
    time: ColumnElement | None
    run_id: ColumnElement | None = None
    #: A primary key or unique constraint lies within order_by: no two rows tie.
    order_is_unique: bool = False
    #: Every order_by entry is a NOT NULL column: no row has a NULL order.
    order_is_not_null: bool = False
    #: An index leads with the key columns: one key's rows are cheap to find.
    key_is_indexed: bool = False
    #: As one entity reads it (:meth:`BoundSpec.stream_for`): which key parts are
    #: grouped under the entity key's collation (``key`` holds them with their
    #: COLLATE), and the key as the spec gives it. None when no part needs one.
    key_collations: tuple[KeyCollation | None, ...] | None = None
    spec_key: tuple[ColumnElement, ...] = ()


@dataclass(frozen=True)
class BoundWitness:
    spec: Witness
    value: ColumnElement | None
    where: ColumnElement | None


@dataclass(frozen=True)
class BoundColumn:
    spec: Column
    target: sa.Column
    value: ColumnElement | None
    where: ColumnElement | None
    is_text: bool
    is_numeric: bool
    also: tuple[BoundWitness, ...] = ()


@dataclass(frozen=True)
class BoundEntity:
    spec: Entity
    table: sa.Table
    key: tuple[ColumnElement, ...]
    key_columns: tuple[sa.Column, ...] | None  # when every key entry is a plain column
    columns: tuple[BoundColumn, ...]
    key_is_unique: bool
    #: The streams whose keys this entity groups under its own key's collation (see
    #: audit/collation.py), as it reads them; most entities have none.
    keyed_streams: dict[str, BoundStream] = field(default_factory=dict)


@dataclass(frozen=True)
class BoundJobLog:
    """A job log bound to its table (or a preset's query over a queue's tables)."""

    spec: JobLog
    source: sa.FromClause
    key: tuple[ColumnElement, ...]
    key_as_text: tuple[bool, ...]  # JSON references, or text on one side only
    id: ColumnElement
    job: ColumnElement
    worker: ColumnElement | None
    attempt: ColumnElement | None
    status: ColumnElement | None
    started_at: ColumnElement
    finished_at: ColumnElement | None
    where: ColumnElement | None


@dataclass(frozen=True)
class BoundOutbox:
    spec: Outbox
    table: sa.Table
    key: tuple[ColumnElement, ...]
    key_as_text: tuple[bool, ...]  # JSON references, or text on one side only
    id: ColumnElement
    announces: ColumnElement
    announces_is_json: bool
    type: ColumnElement | None
    payload: ColumnElement | None
    created_at: ColumnElement
    published_at: ColumnElement | None
    where: ColumnElement | None
    #: Audited column -> the state a message's payload announces for it (as text).
    state: dict[str, ColumnElement] = field(default_factory=dict)


@dataclass(frozen=True)
class BoundSpec:
    spec: Spec
    streams: dict[str, BoundStream]
    entities: dict[str, BoundEntity]
    job_logs: dict[str, BoundJobLog] = field(default_factory=dict)
    outboxes: dict[str, BoundOutbox] = field(default_factory=dict)

    def stream_for(self, entity: BoundEntity, name: str) -> BoundStream:
        """Stream ``name`` as ``entity`` reads it: its keys grouped, filtered and
        matched under the entity key's collation where the two differ."""
        return entity.keyed_streams.get(name) or self.streams[name]


def bind_spec(spec: Spec, conn: Connection) -> BoundSpec:
    """Reflect every table of the spec and resolve every name and expression.

    Reads in a transaction of its own: callers end it (roll back) afterwards.
    """
    with warnings.catch_warnings():
        # SQLite's reflection leaves out an index on an expression, with a warning the
        # user can do nothing about: such an index is no use to drift (see _is_unique).
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", exc.SAWarning
        )
        return _bind_spec(spec, conn)


def _bind_spec(spec: Spec, conn: Connection) -> BoundSpec:
    inspector = sa.inspect(conn)
    metadata = sa.MetaData()
    dialect = get_dialect(conn.dialect.name)
    for event, listener in dialect.reflect_listeners():
        # On the MetaData, so that every table reflected into it gets them once.
        sa.event.listen(metadata, event, listener)
    json_columns: dict[tuple[int, str], tuple[sa.Column, str]] = {}

    def json(column: sa.Column, path: tuple[str, ...], where: str = "") -> ColumnElement:
        # Every JSON column a spec reads, checked for malformed values below.
        json_columns.setdefault((id(column.table), column.name), (column, where))
        return dialect.json_text(column, path)

    tables: dict[tuple[str | None, str], sa.Table] = {}
    _reflect_together(conn, inspector, metadata, _spec_tables(spec))
    invalid = dialect.invalid_indexes(conn)

    def reflect(section: str, name: str, schema: str | None) -> sa.Table:
        if (schema, name) not in tables:
            table = _reflect(conn, inspector, metadata, section, name, schema)
            # An index the database does not trust is no index: it guarantees no
            # uniqueness and serves no lookup. With no schema named, one of that
            # name on a table of that name in any schema is left out (the safe side).
            for s, t, i in invalid:
                if t == name and schema in (None, s):
                    table.indexes -= {x for x in table.indexes if x.name == i}
            tables[(schema, name)] = table
        return tables[(schema, name)]

    streams: dict[str, BoundStream] = {}
    for stream in spec.streams.values():
        table = reflect(f"{stream.section}.table", stream.table, stream.schema)
        order_by = tuple(_resolve(table, o, f"{stream.section}.order_by") for o in stream.order_by)
        order_columns = tuple(o for o in order_by if isinstance(o, sa.Column))
        key = tuple(_resolve(table, k, f"{stream.section}.key") for k in stream.key)
        streams[stream.name] = BoundStream(
            spec=stream,
            table=table,
            key=key,
            order_by=order_by,
            time=_resolve(table, stream.time, f"{stream.section}.time") if stream.time else None,
            run_id=(
                _resolve(table, stream.run_id, f"{stream.section}.run_id")
                if stream.run_id
                else None
            ),
            order_is_unique=bool(order_columns) and _is_unique(table, order_columns),
            order_is_not_null=len(order_columns) == len(order_by)
            and not any(c.nullable for c in order_columns),
            key_is_indexed=_leads_an_index(table, key),
        )

    entities: dict[str, BoundEntity] = {}
    for entity in spec.entities.values():
        table = reflect(f"{entity.section}.table", entity.table, entity.schema)
        key = tuple(_resolve(table, k, f"{entity.section}.key") for k in entity.key)
        plain = tuple(k for k in key if isinstance(k, sa.Column))
        key_columns = plain if len(plain) == len(key) else None
        columns = []
        for column in entity.columns.values():
            source = streams[column.stream]
            target = _column(table, column.name, column.section)
            value = (
                _resolve(source.table, column.value, f"{column.section}.value")
                if column.value is not None
                else None
            )
            if column.fold in ("sum", "count") and column.value is not None:
                _check_numeric_value(value, column)
            columns.append(
                BoundColumn(
                    spec=column,
                    target=target,
                    value=value,
                    where=(
                        _resolve(source.table, column.where, f"{column.section}.where")
                        if column.where
                        else None
                    ),
                    is_text=_is_text(target.type),
                    is_numeric=_is_numeric(target.type),
                    also=tuple(
                        _bind_witness(streams[w.stream].table, w, target, column, i, json)
                        for i, w in enumerate(column.also)
                    ),
                )
            )
        entities[entity.name] = BoundEntity(
            spec=entity,
            table=table,
            key=key,
            key_columns=key_columns,
            columns=tuple(columns),
            key_is_unique=key_columns is not None
            and bool(key_columns)
            and _is_unique(table, key_columns),
        )
    job_logs = {
        name: _bind_job_log(conn, job_log, reflect, json, entities[job_log.entity])
        for name, job_log in spec.job_logs.items()
    }
    outboxes = {}
    for name, outbox in spec.outboxes.items():
        table = reflect(f"{outbox.section}.table", outbox.table, outbox.schema)

        def ref(text: Ref | None, key: str, table: sa.Table = table, outbox: Outbox = outbox):
            return (
                None if text is None else _resolve_ref(table, text, f"{outbox.section}.{key}", json)
            )

        key, as_text = _text_keys(
            tuple(ref(k, f"key[{i}]") for i, k in enumerate(outbox.key)),
            outbox.key,
            entities[outbox.entity],
        )
        outboxes[name] = BoundOutbox(
            spec=outbox,
            table=table,
            key=key,
            key_as_text=as_text,
            id=ref(outbox.id, "id"),
            announces=ref(outbox.announces, "announces"),
            announces_is_json=isinstance(outbox.announces, JsonRef),
            type=ref(outbox.type, "type"),
            payload=ref(outbox.payload, "payload"),
            created_at=ref(outbox.created_at, "created_at"),
            published_at=ref(outbox.published_at, "published_at"),
            where=ref(outbox.where, "where"),
            state={
                name: json(
                    _column(table, str(outbox.payload), f"{outbox.section}.payload"),
                    tuple(path.split(".")),
                    f"{outbox.section}.state.{name}",
                )
                for name, path in outbox.state.items()
            },
        )
    bound = BoundSpec(
        spec=spec, streams=streams, entities=entities, job_logs=job_logs, outboxes=outboxes
    )
    _check_expressions(bound, conn)
    _check_json(conn, dialect, json_columns.values())
    return _with_keyed_streams(bound, conn, dialect.name)


def _with_keyed_streams(bound: BoundSpec, conn: Connection, dialect: str) -> BoundSpec:
    """Each entity with the streams it groups under its own key's collation (see
    audit/collation.py). After the expressions are checked: the collations are asked
    of the database, which would otherwise reject a bad key expression here. Only key
    parts that may be text on both sides are asked about, all in one statement."""
    pairs = [
        (entity, bound.streams[name])
        for entity in bound.entities.values()
        for name in _streams_read(entity.spec)
    ]
    asked: dict[tuple[str, int], Asked] = {}
    for entity, stream in pairs:
        for i, (mine, theirs) in enumerate(zip(stream.key, entity.key)):
            if not is_not_text(mine) and not is_not_text(theirs):
                asked.setdefault((stream.spec.section, i), (stream.table, mine))
                asked.setdefault((entity.spec.section, i), (entity.table, theirs))
    if not asked:
        return bound
    found = dict(zip(asked, key_collations(conn, list(asked.values()))))

    entities: dict[str, BoundEntity] = {}
    for entity, read in pairs:
        parts = stream_key_collations(
            dialect,
            read.spec.section,
            [found.get((read.spec.section, i)) for i in range(len(read.key))],
            entity.spec.section,
            [found.get((entity.spec.section, i)) for i in range(len(entity.key))],
        )
        if parts is not None:
            keyed = replace(
                read,
                key=tuple(k if p is None else p.group(k) for k, p in zip(read.key, parts)),
                key_collations=parts,
                spec_key=read.key,
                key_is_indexed=False,  # an index on the key serves no COLLATE'd lookup
            )
            current = entities.get(entity.spec.name, entity)
            streams = {**current.keyed_streams, read.spec.name: keyed}
            entities[entity.spec.name] = replace(current, keyed_streams=streams)
    if not entities:
        return bound
    return replace(bound, entities={**bound.entities, **entities})


def _streams_read(entity: Entity) -> list[str]:
    """The streams an entity's columns and their witnesses read."""
    names = dict.fromkeys(entity.streams)
    for column in entity.columns.values():
        names.update(dict.fromkeys(w.stream for w in column.also))
    return list(names)


def _check_json(conn: Connection, dialect: Any, columns: Iterable[tuple[sa.Column, str]]) -> None:
    """Malformed JSON would read as NULL on MariaDB (a silently wrong key): refuse it."""
    for column, where in columns:
        invalid = dialect.json_invalid(column)
        if invalid is None:
            continue  # the engine itself rejects malformed JSON when it reads it
        count = conn.execute(
            sa.select(sa.func.count()).select_from(column.table).where(invalid)
        ).scalar_one()
        if count:
            raise DataError(
                f"{where}: {count} row(s) of table {column.table.name!r} hold malformed JSON "
                f"in column {column.name!r}"
            )


def _resolve_ref(table: sa.FromClause, ref: Ref, where: str, json) -> ColumnElement:  # type: ignore[no-untyped-def]
    """A column, an expression, or the text at a path inside a JSON column."""
    if isinstance(ref, JsonRef):
        return json(_column(table, ref.column, f"{where}.json"), ref.path, where)
    return _resolve(table, ref, where)


def _bind_witness(
    table: sa.Table, witness: Witness, target: sa.Column, column: Column, i: int, json
) -> BoundWitness:  # type: ignore[no-untyped-def]
    where = f"{column.section}.also[{i}]"
    value = None
    if witness.value is not None:
        value = _resolve_ref(table, witness.value, f"{where}.value", json)
        if isinstance(witness.value, JsonRef):
            value = sa.cast(value, target.type)  # JSON reads as text: compare as the column's type
    return BoundWitness(
        spec=witness,
        value=value,
        where=_resolve(table, witness.where, f"{where}.where") if witness.where else None,
    )


def _text_keys(
    key: tuple[ColumnElement, ...], refs: tuple[Ref, ...], entity: BoundEntity
) -> tuple[tuple[ColumnElement, ...], tuple[bool, ...]]:
    """Key parts to compare as text: JSON references, and columns whose type is
    text on one side only (``'1004'`` in an outbox, ``1004`` in the entity)."""
    parts, as_text = [], []
    for expr, ref, target in zip(key, refs, entity.key):
        text = isinstance(ref, JsonRef)
        if not text and isinstance(expr, sa.Column) and isinstance(target, sa.Column):
            text = _is_text(expr.type) != _is_text(target.type)
        if text and not isinstance(ref, JsonRef) and not _is_text(expr.type):
            expr = sa.cast(expr, sa.String)
        parts.append(expr)
        as_text.append(text)
    return tuple(parts), tuple(as_text)


def _bind_job_log(  # type: ignore[no-untyped-def]
    conn: Connection, job_log: JobLog, reflect, json, entity: BoundEntity
) -> BoundJobLog:  # type: ignore[no-untyped-def]
    section = job_log.section
    if job_log.preset is not None:
        from audit.presets import bind_preset

        source, names = bind_preset(conn, job_log, reflect)
    else:
        assert job_log.table is not None
        source = reflect(f"{section}.table", job_log.table, job_log.schema)
        names = {
            "id": job_log.id,
            "job": job_log.job,
            "worker": job_log.worker,
            "attempt": job_log.attempt,
            "status": job_log.status,
            "started_at": job_log.started_at,
            "finished_at": job_log.finished_at,
        }
    spec_key = {"job": "name"}

    def ref(name: str) -> ColumnElement | None:
        text = names.get(name)
        if text is None:
            return None
        return _resolve(source, text, f"{section}.{spec_key.get(name, name)}")

    id_, job, started = ref("id"), ref("job"), ref("started_at")
    assert id_ is not None and job is not None and started is not None
    key, as_text = _text_keys(
        tuple(
            _resolve_ref(source, k, f"{section}.key[{i}]", json) for i, k in enumerate(job_log.key)
        ),
        job_log.key,
        entity,
    )
    return BoundJobLog(
        spec=job_log,
        source=source,
        key=key,
        key_as_text=as_text,
        id=id_,
        job=job,
        worker=ref("worker"),
        attempt=ref("attempt"),
        status=ref("status"),
        started_at=started,
        finished_at=ref("finished_at"),
        where=_resolve(source, job_log.where, f"{section}.where") if job_log.where else None,
    )


def _spec_tables(spec: Spec) -> list[tuple[str | None, str]]:
    """The tables a spec names directly (a job-log preset finds its own)."""
    named: list[Stream | Entity | JobLog | Outbox] = [
        *spec.streams.values(),
        *spec.entities.values(),
        *spec.job_logs.values(),
        *spec.outboxes.values(),
    ]
    return list(dict.fromkeys((t.schema, t.table) for t in named if t.table is not None))


def _reflect_together(
    conn: Connection,
    inspector: sa.Inspector,
    metadata: sa.MetaData,
    wanted: list[tuple[str | None, str]],
) -> None:
    """Reflect the spec's tables of each schema in one go (one catalog query per kind of
    detail for all of them, instead of one per table: ~0.03 s less per audit on
    PostgreSQL with four tables).

    Only names the database lists exactly are read here; :func:`_reflect` then finds
    them in ``metadata`` and handles the rest (odd case, missing tables) one at a time,
    with its error messages. Any failure here just leaves that work to :func:`_reflect`.
    """
    by_schema: dict[str | None, list[str]] = {}
    for schema, name in wanted:
        by_schema.setdefault(schema, []).append(name)
    for schema, names in by_schema.items():
        if len(names) < 2:
            continue
        try:
            listed = set(inspector.get_table_names(schema=schema))
            listed |= set(inspector.get_view_names(schema=schema))
            present = [n for n in names if n in listed]
            if len(present) > 1:
                metadata.reflect(
                    bind=conn, schema=schema, only=present, views=True, resolve_fks=False
                )
        except exc.SQLAlchemyError as err:
            if isinstance(err, exc.DBAPIError):
                # A failed statement aborts a PostgreSQL transaction; every caller
                # reads the schema in a transaction of its own (and ends it after).
                conn.rollback()
            continue


def _reflect(
    conn: Connection,
    inspector: sa.Inspector,
    metadata: sa.MetaData,
    section: str,
    name: str,
    schema: str | None,
) -> sa.Table:
    try:
        return sa.Table(name, metadata, autoload_with=conn, schema=schema)
    except exc.NoSuchTableError:
        try:
            names = inspector.get_table_names(schema=schema) + inspector.get_view_names(
                schema=schema
            )
        except exc.SQLAlchemyError:
            names = []
        where = f"{schema}.{name}" if schema else name
        raise SpecError(
            f"{section}: table {where!r} not found{did_you_mean(name, names)}"
        ) from None
    except exc.DBAPIError as err:
        raise DatabaseError(
            f"{section}: cannot read table {name!r}: {describe_db_error(err)}"
        ) from err


def _column(table: sa.FromClause, name: str, where: str) -> sa.Column:
    if name in table.c:
        return table.c[name]  # type: ignore[return-value]  # a Table's columns are Columns
    folded = [c for c in table.c if c.name.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]  # type: ignore[return-value]
    raise SpecError(
        f"{where}: column {name!r} not found in table {getattr(table, 'name', table)!r}"
        + did_you_mean(name, [c.name for c in table.c])
    )


def _resolve(table: sa.FromClause, text: str, where: str) -> ColumnElement:
    """A plain column name becomes the Column; anything else a SQL expression."""
    if text in table.c:
        return table.c[text]
    if _IDENTIFIER.fullmatch(text) and text.lower() not in _SQL_WORDS:
        return _column(table, text, where)
    return sa.literal_column(f"({text})")


def _is_text(type_: sa.types.TypeEngine) -> bool:
    return isinstance(type_, sa.String)  # Text, Enum and the dialects' own string types too


def _is_numeric(type_: sa.types.TypeEngine) -> bool:
    return isinstance(type_, (sa.Integer, sa.Numeric, sa.Float)) and not isinstance(
        type_, sa.Boolean
    )


def _check_numeric_value(value: ColumnElement | None, column: Column) -> None:
    if isinstance(value, sa.Column) and _is_text(value.type):
        raise SpecError(
            f"{column.section}.value: fold {column.fold!r} needs numbers, but column "
            f"{value.name!r} holds text ({value.type})"
        )


def _leads_an_index(table: sa.Table, key: tuple[ColumnElement, ...]) -> bool:
    """True when the key's plain columns are the leading columns of an index or the PK."""
    if not all(isinstance(k, sa.Column) for k in key):
        return False
    names = {k.name for k in key}  # type: ignore[attr-defined]
    leads = [[c.name for c in table.primary_key.columns]] if table.primary_key else []
    leads += [cols for cols in map(_whole_index_columns, table.indexes) if cols]
    return any(set(cols[: len(names)]) == names for cols in leads)


def _whole_index_columns(index: sa.Index) -> list[str]:
    """The index's leading plain columns, in order, up to its first expression; none
    for a partial index (a WHERE clause), which may not hold every row. (Invalid
    PostgreSQL indexes are left out of the table when it is reflected.)"""
    if any(k.endswith("_where") and v is not None for k, v in index.dialect_kwargs.items()):
        return []
    names = []
    for expression in index.expressions:
        if not isinstance(expression, sa.Column):
            break
        names.append(expression.name)
    return names


def _is_unique(table: sa.Table, key_columns: tuple[sa.Column, ...]) -> bool:
    """True when a primary key, unique constraint or unique index guarantees one row per
    key: one on plain columns, all of them in the key, that holds every row (see
    :func:`_whole_index_columns`). A unique index that also has an expression (lower(x))
    says nothing about its plain columns alone."""
    names = {c.name for c in key_columns}
    candidates: list[set[str]] = []
    pk = table.primary_key
    if pk is not None and len(pk.columns):
        candidates.append({c.name for c in pk.columns})
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            candidates.append({c.name for c in constraint.columns})
    for index in table.indexes:
        columns = _whole_index_columns(index)
        if index.unique and columns and len(columns) == len(index.expressions):
            candidates.append(set(columns))
    return any(c and c <= names for c in candidates)


def _check_expressions(bound: BoundSpec, conn: Connection) -> None:
    """Ask the database to plan each expression, so an error names its spec key."""
    probes: list[tuple[str, sa.FromClause, ColumnElement]] = []
    for stream in bound.streams.values():
        section = stream.spec.section
        for i, expr in enumerate(stream.key):
            probes.append((f"{section}.key[{i}]", stream.table, expr))
        for i, expr in enumerate(stream.order_by):
            probes.append((f"{section}.order_by[{i}]", stream.table, expr))
        if stream.time is not None:
            probes.append((f"{section}.time", stream.table, stream.time))
    for entity in bound.entities.values():
        for i, expr in enumerate(entity.key):
            probes.append((f"{entity.spec.section}.key[{i}]", entity.table, expr))
        for column in entity.columns:
            stream_table = bound.streams[column.spec.stream].table
            if column.value is not None:
                probes.append((f"{column.spec.section}.value", stream_table, column.value))
            if column.where is not None:
                probes.append((f"{column.spec.section}.where", stream_table, column.where))
        for column in entity.columns:
            for i, witness in enumerate(column.also):
                w_table = bound.streams[witness.spec.stream].table
                at = f"{column.spec.section}.also[{i}]"
                if witness.value is not None:
                    probes.append((f"{at}.value", w_table, witness.value))
                if witness.where is not None:
                    probes.append((f"{at}.where", w_table, witness.where))
    for job_log in bound.job_logs.values():
        section = job_log.spec.section
        for i, expr in enumerate(job_log.key):
            probes.append((f"{section}.key[{i}]", job_log.source, expr))
        for name in ("started_at", "finished_at", "where", "attempt", "status", "worker"):
            expr = getattr(job_log, name)
            if expr is not None:
                probes.append((f"{section}.{name}", job_log.source, expr))
    for outbox in bound.outboxes.values():
        section = outbox.spec.section
        for i, expr in enumerate(outbox.key):
            probes.append((f"{section}.key[{i}]", outbox.table, expr))
        probes.append((f"{section}.announces", outbox.table, outbox.announces))
        if outbox.where is not None:
            probes.append((f"{section}.where", outbox.table, outbox.where))
    for where, table, expr in probes:
        if isinstance(expr, sa.Column):
            continue
        query = sa.select(expr).select_from(table).where(sa.false()).limit(0)
        savepoint = conn.begin_nested() if conn.in_transaction() else None
        try:
            conn.execute(query).all()
        except exc.DBAPIError as err:
            if savepoint is not None:
                savepoint.rollback()
            raise SpecError(f"{where}: the database rejects it: {describe_db_error(err)}") from None
        else:
            if savepoint is not None:
                savepoint.commit()
