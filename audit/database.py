"""Connecting to the audited database: URLs, engines, secrets and errors.

Passwords never leave this module unmasked: :func:`mask_url` is what every
output uses, and :func:`redact` scrubs a known secret out of any message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url

from audit.errors import DatabaseError

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite+pysqlite",
}
_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def resolve_url(
    cli_url: str | None, spec_url: str | None, spec_dir: Path | None = None
) -> tuple[URL, str]:
    """Pick the database URL: --db, then DRIFT_DATABASE_URL, then the spec.

    Returns the parsed URL and where it came from. A relative SQLite path in the
    spec is resolved against the spec file's folder, so a spec kept beside its
    database works from any working directory.
    """
    env_url = os.environ.get("DRIFT_DATABASE_URL")
    if cli_url:
        raw, source, base = cli_url, "--db", None
    elif env_url:
        raw, source, base = env_url, "DRIFT_DATABASE_URL", None
    elif spec_url:
        raw, source, base = spec_url, "the spec's [database] url", spec_dir
    else:
        raise DatabaseError(
            "no database: pass --db URL, set DRIFT_DATABASE_URL, or add [database] url to the spec"
        )
    url = parse_url(raw)
    if (
        base is not None
        and url.get_backend_name() == "sqlite"
        and url.database
        and url.database != ":memory:"
        and not url.database.startswith("file:")
        and not Path(url.database).is_absolute()
    ):
        url = url.set(database=str((base / url.database).resolve()))
    return url, source


def parse_url(raw: str) -> URL:
    """Parse a URL, choosing drift's default driver for bare dialect names."""
    try:
        url = make_url(raw)
    except (exc.ArgumentError, ValueError):
        raise DatabaseError(f"invalid database URL: {mask_text(raw)}") from None
    backend = url.drivername
    if backend in _DRIVERS:
        url = url.set(drivername=_DRIVERS[backend])
    elif url.get_backend_name() == "mariadb":
        url = url.set(drivername="mysql+" + (url.get_driver_name() or "pymysql"))
    if url.get_backend_name() not in ("postgresql", "mysql", "sqlite"):
        raise DatabaseError(
            f"unsupported database {url.get_backend_name()!r}: drift supports "
            "postgresql, mysql/mariadb and sqlite"
        )
    return url


def mask_url(url: URL | str) -> str:
    """The URL as text with any password replaced by ***."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except (exc.ArgumentError, ValueError):
            return mask_text(str(url))
    return url.render_as_string(hide_password=True)


def mask_text(text: str) -> str:
    """Best-effort masking of user:password@ in free text that is not a URL."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def redact(text: str, *secrets: str | None) -> str:
    """Remove every known secret (and URL passwords) from a message.

    URL passwords are masked wherever they appear; known secrets are also
    replaced as plain text, except very short ones (under 4 characters), which
    would garble the message without protecting anything.
    """
    text = mask_text(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def create_engine(url: URL) -> Engine:
    """An engine with drift's connection settings for the URL's dialect.

    SQLite gets real transactions: pysqlite's legacy mode would otherwise not
    emit BEGIN before a SELECT, and a snapshot read needs one.
    """
    backend = url.get_backend_name()
    kwargs: dict[str, object] = {"pool_pre_ping": False}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    elif backend == "postgresql":
        # Named, so a DBA sees drift in pg_stat_activity (a URL may override it).
        connect_args: dict[str, object] = {"connect_timeout": 10}
        if "application_name" not in url.query:
            connect_args["application_name"] = "drift"
        kwargs["connect_args"] = connect_args
    elif backend == "mysql":
        kwargs["connect_args"] = {"connect_timeout": 10, "charset": "utf8mb4"}
    try:
        engine = sa.create_engine(url, **kwargs)
    except ModuleNotFoundError as err:
        extra = _EXTRAS.get(backend, backend)
        raise DatabaseError(
            f"the {backend} driver ({err.name}) is not installed: "
            f"pip install 'drift-audit[{extra}]'"
        ) from None
    except exc.ArgumentError as err:
        raise DatabaseError(f"invalid database URL {mask_url(url)}: {err}") from None
    if backend == "sqlite":
        _sqlite_transactions(engine)
    return engine


def _sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


@contextmanager
def database_errors(url: URL, doing: str) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors into one-line :class:`DatabaseError`."""
    try:
        yield
    except exc.DBAPIError as err:
        raise DatabaseError(
            redact(f"{doing} ({mask_url(url)}): {describe_db_error(err)}", url.password)
        ) from err
    except exc.SQLAlchemyError as err:
        raise DatabaseError(redact(f"{doing} ({mask_url(url)}): {err}", url.password)) from err


def describe_db_error(err: exc.DBAPIError) -> str:
    """The driver's own message, first line only, without SQLAlchemy's boilerplate."""
    orig = err.orig if err.orig is not None else err
    text = str(orig).strip() or type(orig).__name__
    # PyMySQL reports (code, 'message').
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = args[1]
    first = text.splitlines()[0] if text else text
    return first
