"""The spec file (``drift.toml``): what to audit and how each column is rebuilt.

The spec is parsed into frozen dataclasses. Parsing checks everything that can
be checked without a database: unknown sections and keys (with "did you
mean"), types, fold names, references between sections and key arity. Checks
against the live schema happen in :mod:`audit.schema`.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import SpecError, did_you_mean

FOLDS = ("sum", "count", "min", "max", "first", "last")
NUMERIC_FOLDS = ("sum", "count")
SUPPORTED_VERSION = 1


@dataclass(frozen=True)
class JsonRef:
    """A value inside a JSON column: ``{ json = "args", path = "sku" }``.

    ``path`` is a dotted path of object keys (``"item.sku"``). It is compiled
    per dialect (:mod:`audit.dialects`) and always reads as text, so keys held
    in JSON are compared as text with the entity's key values.
    """

    column: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.column}.{'.'.join(self.path)}"


Ref = str | JsonRef


@dataclass(frozen=True)
class Stream:
    """A table of facts about entities, read in a total order."""

    name: str
    table: str
    key: tuple[str, ...]
    order_by: tuple[str, ...]
    time: str | None = None
    schema: str | None = None
    run_id: str | None = None  # the job run that wrote each row (attribution)

    @property
    def section(self) -> str:
        return f"streams.{self.name}"


@dataclass(frozen=True)
class Witness:
    """A second rebuild of a column from another stream (``also = [...]``).

    Where a witness and the column's own rebuild disagree on a key, that is a
    ``witness_disagreement`` finding.
    """

    stream: str
    fold: str
    value: Ref | None = None
    where: str | None = None


@dataclass(frozen=True)
class Column:
    """One audited column of an entity and the fold that rebuilds it."""

    entity: str
    name: str
    stream: str
    fold: str
    value: str | None = None
    where: str | None = None
    initial: Any = None
    tolerance: float = 0.0
    rel_tolerance: float = 0.0
    also: tuple[Witness, ...] = ()

    @property
    def section(self) -> str:
        return f"entities.{self.entity}.columns.{self.name}"

    @property
    def has_tolerance(self) -> bool:
        return self.tolerance > 0 or self.rel_tolerance > 0


@dataclass(frozen=True)
class Entity:
    """A current-state table whose audited columns are rebuilt from streams."""

    name: str
    table: str
    key: tuple[str, ...]
    columns: Mapping[str, Column] = field(default_factory=dict)
    schema: str | None = None

    @property
    def section(self) -> str:
        return f"entities.{self.name}"

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams this entity's columns read, in first-use order."""
        seen: dict[str, None] = {}
        for column in self.columns.values():
            seen.setdefault(column.stream, None)
        return tuple(seen)


DEFAULT_FAILED_STATUSES = ("failed", "failure", "error", "errored", "crashed", "dead")


@dataclass(frozen=True)
class JobLog:
    """A table of job runs: which job touched which entity key, and when.

    ``preset`` names a job-queue schema (:mod:`audit.presets`) that supplies
    the table and columns; the spec still says which entity and key.
    """

    name: str
    entity: str
    key: tuple[Ref, ...]
    table: str | None = None
    schema: str | None = None
    id: str = "id"
    job: str | None = None
    worker: str | None = None
    attempt: str | None = None
    status: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    where: str | None = None
    failed: tuple[str, ...] = DEFAULT_FAILED_STATUSES
    preset: str | None = None

    @property
    def section(self) -> str:
        return f"job_logs.{self.name}"


@dataclass(frozen=True)
class Outbox:
    """A transactional outbox: one message per stream row it announces."""

    name: str
    table: str
    entity: str
    key: tuple[Ref, ...]
    stream: str
    announces: Ref
    created_at: str
    id: str = "id"
    type: str | None = None
    payload: str | None = None
    published_at: str | None = None
    where: str | None = None
    schema: str | None = None
    #: Audited column -> dotted path in the payload: the state each message announces.
    state: Mapping[str, str] = field(default_factory=dict)

    @property
    def section(self) -> str:
        return f"outboxes.{self.name}"


@dataclass(frozen=True)
class Spec:
    """A parsed, self-consistent spec file."""

    streams: Mapping[str, Stream]
    entities: Mapping[str, Entity]
    job_logs: Mapping[str, JobLog] = field(default_factory=dict)
    outboxes: Mapping[str, Outbox] = field(default_factory=dict)
    database_url: str | None = None
    version: int = SUPPORTED_VERSION
    path: Path | None = None
    sha256: str = ""
    text: str = ""

    @property
    def base_dir(self) -> Path:
        """Folder that relative SQLite paths in the spec are resolved against."""
        return self.path.parent if self.path else Path.cwd()


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = ("version", "database", "streams", "entities", "job_logs", "outboxes")
_DATABASE_KEYS = ("url",)
_STREAM_KEYS = ("table", "schema", "key", "order_by", "time", "run_id")
_ENTITY_KEYS = ("table", "schema", "key", "columns")
_COLUMN_KEYS = (
    "stream",
    "fold",
    "value",
    "where",
    "initial",
    "tolerance",
    "rel_tolerance",
    "also",
)
_WITNESS_KEYS = ("stream", "fold", "value", "where")
_JSON_KEYS = ("json", "path")
_JOB_LOG_KEYS = (
    "preset",
    "table",
    "schema",
    "entity",
    "key",
    "id",
    "name",
    "worker",
    "attempt",
    "status",
    "started_at",
    "finished_at",
    "where",
    "failed",
)
_OUTBOX_KEYS = (
    "state",
    "table",
    "schema",
    "entity",
    "key",
    "id",
    "stream",
    "announces",
    "type",
    "payload",
    "created_at",
    "published_at",
    "where",
)


def load_spec(path: str | Path) -> Spec:
    """Read and parse a spec file; every problem is a :class:`SpecError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path.name}: not UTF-8 text") from None
    return parse_spec(text, path=path.resolve())


def parse_spec(text: str, path: Path | None = None) -> Spec:
    """Parse spec text (TOML) into a :class:`Spec`."""
    name = path.name if path else "spec"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{name}: invalid TOML: {exc}") from None
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        return _parse(data, path, sha, text)
    except SpecError as exc:
        raise SpecError(f"{name}: {exc}") from None


def _parse(data: dict[str, Any], path: Path | None, sha: str, text: str) -> Spec:
    _check_keys(data, _TOP_KEYS, "")
    version = data.get("version")
    if version is None:
        raise SpecError("version: missing (write version = 1 at the top)")
    if version != SUPPORTED_VERSION or isinstance(version, bool):
        raise SpecError(f"version: {version!r} is not supported (this drift reads version 1)")

    database_url = None
    if "database" in data:
        database = _table(data["database"], "database")
        _check_keys(database, _DATABASE_KEYS, "database")
        database_url = _opt_str(database, "url", "database")

    streams_raw = _table(data.get("streams", {}), "streams")
    if not streams_raw:
        raise SpecError("streams: at least one stream is required")
    streams = {n: _parse_stream(n, _table(v, f"streams.{n}")) for n, v in streams_raw.items()}

    entities_raw = _table(data.get("entities", {}), "entities")
    if not entities_raw:
        raise SpecError("entities: at least one entity is required")
    entities = {
        n: _parse_entity(n, _table(v, f"entities.{n}"), streams) for n, v in entities_raw.items()
    }
    job_logs = {
        n: _parse_job_log(n, _table(v, f"job_logs.{n}"), entities)
        for n, v in _table(data.get("job_logs", {}), "job_logs").items()
    }
    outboxes = {
        n: _parse_outbox(n, _table(v, f"outboxes.{n}"), entities, streams)
        for n, v in _table(data.get("outboxes", {}), "outboxes").items()
    }
    return Spec(
        streams=streams,
        entities=entities,
        job_logs=job_logs,
        outboxes=outboxes,
        database_url=database_url,
        version=version,
        path=path,
        sha256=sha,
        text=text,
    )


def _parse_stream(name: str, raw: dict[str, Any]) -> Stream:
    where = f"streams.{name}"
    _check_keys(raw, _STREAM_KEYS, where)
    return Stream(
        name=name,
        table=_req_str(raw, "table", where),
        schema=_opt_str(raw, "schema", where),
        key=_str_list(raw, "key", where),
        order_by=_str_list(raw, "order_by", where),
        time=_opt_str(raw, "time", where),
        run_id=_opt_str(raw, "run_id", where),
    )


def _parse_entity(name: str, raw: dict[str, Any], streams: dict[str, Stream]) -> Entity:
    where = f"entities.{name}"
    _check_keys(raw, _ENTITY_KEYS, where)
    key = _str_list(raw, "key", where)
    columns_raw = _table(raw.get("columns", {}), f"{where}.columns")
    if not columns_raw:
        raise SpecError(f"{where}.columns: at least one audited column is required")
    columns = {}
    for col_name, col_raw in columns_raw.items():
        column = _parse_column(name, col_name, _table(col_raw, f"{where}.columns.{col_name}"))
        stream = streams.get(column.stream)
        if stream is None:
            raise SpecError(
                f"{column.section}.stream: unknown stream {column.stream!r}"
                + did_you_mean(column.stream, streams)
            )
        if len(stream.key) != len(key):
            raise SpecError(
                f"{column.section}.stream: stream {stream.name!r} has a key of "
                f"{len(stream.key)} column(s) but entity {name!r} has {len(key)}"
            )
        for i, witness in enumerate(column.also):
            w_stream = streams.get(witness.stream)
            if w_stream is None:
                raise SpecError(
                    f"{column.section}.also[{i}].stream: unknown stream {witness.stream!r}"
                    + did_you_mean(witness.stream, streams)
                )
            if len(w_stream.key) != len(key):
                raise SpecError(
                    f"{column.section}.also[{i}].stream: stream {w_stream.name!r} has a key of "
                    f"{len(w_stream.key)} column(s) but entity {name!r} has {len(key)}"
                )
        columns[col_name] = column
    return Entity(
        name=name,
        table=_req_str(raw, "table", where),
        schema=_opt_str(raw, "schema", where),
        key=key,
        columns=columns,
    )


def _parse_column(entity: str, name: str, raw: dict[str, Any]) -> Column:
    where = f"entities.{entity}.columns.{name}"
    _check_keys(raw, _COLUMN_KEYS, where)
    fold = _fold_name(raw, where)
    value = _opt_str(raw, "value", where)
    if value is None and fold != "count":
        raise SpecError(f"{where}.value: required for fold = {fold!r}")
    initial = raw.get("initial")
    if initial is not None and not isinstance(initial, (int, float, str, bool)):
        raise SpecError(f"{where}.initial: must be a number, a string or a boolean")
    if (
        fold in NUMERIC_FOLDS
        and initial is not None
        and (isinstance(initial, bool) or not isinstance(initial, (int, float)))
    ):
        raise SpecError(f"{where}.initial: fold = {fold!r} needs a numeric initial value")
    return Column(
        entity=entity,
        name=name,
        stream=_req_str(raw, "stream", where),
        fold=fold,
        value=value,
        where=_opt_str(raw, "where", where),
        initial=initial,
        tolerance=_tolerance(raw, "tolerance", where),
        rel_tolerance=_tolerance(raw, "rel_tolerance", where),
        also=_witnesses(raw, where),
    )


def _fold_name(raw: dict[str, Any], where: str) -> str:
    fold = _req_str(raw, "fold", where)
    if fold not in FOLDS:
        raise SpecError(
            f"{where}.fold: unknown fold {fold!r}{did_you_mean(fold, FOLDS)}; "
            f"use one of {', '.join(FOLDS)}"
        )
    return fold


def _witnesses(raw: dict[str, Any], where: str) -> tuple[Witness, ...]:
    value = raw.get("also", [])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}.also: must be a list of {{ stream, fold, value }} tables")
    witnesses = []
    for i, item in enumerate(value):
        at = f"{where}.also[{i}]"
        item = _table(item, at)
        _check_keys(item, _WITNESS_KEYS, at)
        fold = _fold_name(item, at)
        ref = _opt_ref(item, "value", at)
        if ref is None and fold != "count":
            raise SpecError(f"{at}.value: required for fold = {fold!r}")
        witnesses.append(
            Witness(
                stream=_req_str(item, "stream", at),
                fold=fold,
                value=ref,
                where=_opt_str(item, "where", at),
            )
        )
    return tuple(witnesses)


def _parse_job_log(name: str, raw: dict[str, Any], entities: dict[str, Entity]) -> JobLog:
    where = f"job_logs.{name}"
    _check_keys(raw, _JOB_LOG_KEYS, where)
    preset = _opt_str(raw, "preset", where)
    from audit.presets import PRESETS

    if preset is not None:
        if preset not in PRESETS:
            raise SpecError(
                f"{where}.preset: unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; "
                f"use one of {', '.join(PRESETS)}"
            )
        preset_keys = ("table", "id", "name", "worker", "attempt", "status")
        for given in (*preset_keys, "started_at", "finished_at"):
            if given in raw:
                raise SpecError(f"{where}.{given}: set by preset = {preset!r}; remove it")
    entity = _entity_ref(raw, where, entities)
    key = _ref_list(raw, "key", where)
    _check_arity(key, entity, where)
    default_failed: tuple[str, ...] = DEFAULT_FAILED_STATUSES
    if preset is not None:
        default_failed = PRESETS[preset].failed
    failed = raw.get("failed", list(default_failed))
    if isinstance(failed, str):
        failed = [failed]
    if not isinstance(failed, list) or not all(isinstance(v, str) for v in failed):
        raise SpecError(f"{where}.failed: must be a list of status values")
    if preset is not None:
        return JobLog(
            name=name,
            entity=entity.name,
            key=key,
            schema=_opt_str(raw, "schema", where),
            where=_opt_str(raw, "where", where),
            failed=tuple(failed),
            preset=preset,
        )
    return JobLog(
        name=name,
        entity=entity.name,
        key=key,
        table=_req_str(raw, "table", where),
        schema=_opt_str(raw, "schema", where),
        id=_opt_str(raw, "id", where) or "id",
        job=_req_str(raw, "name", where),
        worker=_opt_str(raw, "worker", where),
        attempt=_opt_str(raw, "attempt", where),
        status=_opt_str(raw, "status", where),
        started_at=_req_str(raw, "started_at", where),
        finished_at=_req_str(raw, "finished_at", where),
        where=_opt_str(raw, "where", where),
        failed=tuple(failed),
    )


def _parse_outbox(
    name: str, raw: dict[str, Any], entities: dict[str, Entity], streams: dict[str, Stream]
) -> Outbox:
    where = f"outboxes.{name}"
    _check_keys(raw, _OUTBOX_KEYS, where)
    entity = _entity_ref(raw, where, entities)
    key = _ref_list(raw, "key", where)
    _check_arity(key, entity, where)
    stream_name = _req_str(raw, "stream", where)
    stream = streams.get(stream_name)
    if stream is None:
        raise SpecError(
            f"{where}.stream: unknown stream {stream_name!r}{did_you_mean(stream_name, streams)}"
        )
    if len(stream.order_by) != 1:
        raise SpecError(
            f"{where}.stream: stream {stream_name!r} is ordered by {len(stream.order_by)} "
            "columns; an outbox announces rows by one order_by value"
        )
    if "announces" not in raw:
        raise SpecError(f"{where}.announces: missing")
    announces = _opt_ref(raw, "announces", where)
    assert announces is not None
    state = _table(raw.get("state", {}), f"{where}.state")
    if state and raw.get("payload") is None:
        raise SpecError(f"{where}.state: needs payload (the JSON column that carries the state)")
    for column, path in state.items():
        if column not in entity.columns:
            raise SpecError(
                f"{where}.state.{column}: entity {entity.name!r} audits no column {column!r}"
                + did_you_mean(column, entity.columns)
            )
        if entity.columns[column].stream != stream_name:
            raise SpecError(
                f"{where}.state.{column}: {column!r} is rebuilt from stream "
                f"{entity.columns[column].stream!r}, not {stream_name!r}"
            )
        if not isinstance(path, str) or not path.strip():
            raise SpecError(
                f"{where}.state.{column}: must be a path in the payload, e.g. 'stock.on_hand'"
            )
    return Outbox(
        name=name,
        table=_req_str(raw, "table", where),
        schema=_opt_str(raw, "schema", where),
        entity=entity.name,
        key=key,
        id=_opt_str(raw, "id", where) or "id",
        stream=stream_name,
        announces=announces,
        type=_opt_str(raw, "type", where),
        payload=_opt_str(raw, "payload", where),
        created_at=_req_str(raw, "created_at", where),
        published_at=_opt_str(raw, "published_at", where),
        where=_opt_str(raw, "where", where),
        state=dict(state),
    )


def _entity_ref(raw: dict[str, Any], where: str, entities: dict[str, Entity]) -> Entity:
    name = _req_str(raw, "entity", where)
    entity = entities.get(name)
    if entity is None:
        raise SpecError(f"{where}.entity: unknown entity {name!r}{did_you_mean(name, entities)}")
    return entity


def _check_arity(key: tuple[Ref, ...], entity: Entity, where: str) -> None:
    if len(key) != len(entity.key):
        raise SpecError(
            f"{where}.key: {len(key)} part(s), but entity {entity.name!r} has a key of "
            f"{len(entity.key)} column(s)"
        )


# --------------------------------------------------------------------------- helpers


def _check_keys(raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            place = f"{where}: unknown key" if where else "unknown section"
            raise SpecError(f"{place} {key!r}{did_you_mean(key, allowed)}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a table (a [section]), not {type(value).__name__}")
    return value


def _req_str(raw: dict[str, Any], key: str, where: str) -> str:
    if key not in raw:
        raise SpecError(f"{where}.{key}: missing")
    value = _opt_str(raw, key, where)
    assert value is not None
    return value


def _opt_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}.{key}: must be a non-empty string")
    return value


def _str_list(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    if key not in raw:
        raise SpecError(f"{where}.{key}: missing")
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise SpecError(f"{where}.{key}: must be a non-empty list of column names or expressions")
    return tuple(value)


def _json_ref(value: dict[str, Any], where: str) -> JsonRef:
    _check_keys(value, _JSON_KEYS, where)
    column = value.get("json")
    path = value.get("path")
    if not isinstance(column, str) or not column.strip():
        raise SpecError(f"{where}.json: must name the JSON column")
    if isinstance(path, str):
        path = path.split(".")
    if (
        not isinstance(path, list)
        or not path
        or not all(isinstance(p, str) and p.strip() for p in path)
    ):
        raise SpecError(f'{where}.path: must be a dotted path of object keys, e.g. "sku"')
    return JsonRef(column=column, path=tuple(path))


def _opt_ref(raw: dict[str, Any], key: str, where: str) -> Ref | None:
    value = raw.get(key)
    if isinstance(value, dict):
        return _json_ref(value, f"{where}.{key}")
    return _opt_str(raw, key, where)


def _ref_list(raw: dict[str, Any], key: str, where: str) -> tuple[Ref, ...]:
    if key not in raw:
        raise SpecError(f"{where}.{key}: missing")
    value = raw[key]
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}.{key}: must be a non-empty list of columns or JSON references")
    refs: list[Ref] = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            refs.append(_json_ref(item, f"{where}.{key}[{i}]"))
        elif isinstance(item, str) and item.strip():
            refs.append(item)
        else:
            raise SpecError(f"{where}.{key}[{i}]: must be a column name or {{ json, path }}")
    return tuple(refs)


def _tolerance(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SpecError(f"{where}.{key}: must be a number >= 0")
    return float(value)
