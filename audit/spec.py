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
class Stream:
    """A table of facts about entities, read in a total order."""

    name: str
    table: str
    key: tuple[str, ...]
    order_by: tuple[str, ...]
    time: str | None = None
    schema: str | None = None

    @property
    def section(self) -> str:
        return f"streams.{self.name}"


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


@dataclass(frozen=True)
class Spec:
    """A parsed, self-consistent spec file."""

    streams: Mapping[str, Stream]
    entities: Mapping[str, Entity]
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

_TOP_KEYS = ("version", "database", "streams", "entities")
_DATABASE_KEYS = ("url",)
_STREAM_KEYS = ("table", "schema", "key", "order_by", "time")
_ENTITY_KEYS = ("table", "schema", "key", "columns")
_COLUMN_KEYS = ("stream", "fold", "value", "where", "initial", "tolerance", "rel_tolerance")


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
    return Spec(
        streams=streams,
        entities=entities,
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
    fold = _req_str(raw, "fold", where)
    if fold not in FOLDS:
        raise SpecError(
            f"{where}.fold: unknown fold {fold!r}{did_you_mean(fold, FOLDS)}; "
            f"use one of {', '.join(FOLDS)}"
        )
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


def _tolerance(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SpecError(f"{where}.{key}: must be a number >= 0")
    return float(value)
