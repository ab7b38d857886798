"""Test backends: SQLite in tmp_path by default, real servers by URL.

PostgreSQL and MariaDB URLs come from DRIFT_TEST_POSTGRES_URL and
DRIFT_TEST_MYSQL_URL (defaulting to the local servers). Each test gets its own
scratch schema (PostgreSQL) or database (MariaDB), dropped afterwards. Server
tests are skipped when the server is unreachable, and fail instead when
DRIFT_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

POSTGRES_URL = os.environ.get(
    "DRIFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("DRIFT_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("DRIFT_REQUIRE_SERVERS") == "1"
BACKENDS = ("sqlite", "postgresql", "mysql")


@cache
def server_problem(name: str) -> str | None:
    """Why a server cannot be used, or None when it answers."""
    url = POSTGRES_URL if name == "postgresql" else MYSQL_URL
    connect_args = {"connect_timeout": 5}
    try:
        engine = sa.create_engine(url, connect_args=connect_args)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return f"{name} at {make_url(url).render_as_string(hide_password=True)}: {exc}"
    return None


def require_server(name: str) -> None:
    problem = server_problem(name)
    if problem is None:
        return
    if REQUIRE_SERVERS:
        pytest.fail(f"DRIFT_REQUIRE_SERVERS=1 but {problem}")
    pytest.skip(f"server unreachable: {problem}")


@dataclass
class Backend:
    """A scratch database on one engine, for one test."""

    name: str
    url: str
    engine: Engine
    tmp_path: Path

    @property
    def dialect(self) -> str:
        return self.name

    def execute(self, sql: str, **params: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def client_command(self) -> tuple[list[str], dict[str, str]]:
        """The standard client's command line (and environment) for this database."""
        url = make_url(self.url)
        env = dict(os.environ)
        if self.name == "sqlite":
            return ["sqlite3", "-bail", str(url.database)], env
        if self.name == "postgresql":
            env["PGOPTIONS"] = f"-csearch_path={self.schema}"
            if url.password:
                env["PGPASSWORD"] = str(url.password)
            return [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                url.host or "127.0.0.1",
                "-p",
                str(url.port or 5432),
                "-U",
                url.username or "postgres",
                "-d",
                url.database or "test",
            ], env
        command = [
            "mariadb",
            "-h",
            url.host or "127.0.0.1",
            "-P",
            str(url.port or 3306),
            "-u",
            url.username or "root",
            "--default-character-set=utf8mb4",
            url.database or "test",
        ]
        if url.password:
            env["MYSQL_PWD"] = str(url.password)
        return command, env

    schema: str = ""


def _make_backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    from drift.testing import scratch_database

    if name != "sqlite":
        require_server(name)
    if name == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        engine = sa.create_engine(url)
        try:
            yield Backend(name=name, url=url, engine=engine, tmp_path=tmp_path)
        finally:
            engine.dispose()
        return
    base = POSTGRES_URL if name == "postgresql" else MYSQL_URL
    with scratch_database(base, tmp_path) as url:
        parsed = make_url(url)
        if name == "postgresql":
            schema = str(parsed.query["options"]).split("search_path=", 1)[1]
        else:
            schema = parsed.database or ""
        engine = sa.create_engine(url)
        try:
            yield Backend(name=name, url=url, engine=engine, tmp_path=tmp_path, schema=schema)
        finally:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every test using this runs on SQLite, PostgreSQL and MariaDB."""
    yield from _make_backend(request.param, tmp_path)


@pytest.fixture(params=("postgresql", "mysql"))
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL and MariaDB only (concurrency with real servers)."""
    yield from _make_backend(request.param, tmp_path)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend("sqlite", tmp_path)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL only."""
    yield from _make_backend("postgresql", tmp_path)


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[Backend]:
    """MariaDB only."""
    yield from _make_backend("mysql", tmp_path)


def make_backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    """For tests that pick their engines themselves (a generator: use with next())."""
    return _make_backend(name, tmp_path)


# --------------------------------------------------------------------------- scenarios


@pytest.fixture
def scenario_runs(request: pytest.FixtureRequest):
    """Count the runs of a reliability scenario (see tests/reliability.py)."""
    from tests.reliability import RUNS_KEY, ScenarioRuns

    runs = ScenarioRuns()
    request.node.stash[RUNS_KEY] = runs
    return runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    from tests.reliability import record

    report = (yield).get_result()
    outcomes = item.stash.setdefault(_OUTCOMES, [])
    outcomes.append("skipped" if report.skipped else report.outcome)
    if report.when == "teardown":
        final = (
            "failed" if "failed" in outcomes else "skipped" if "skipped" in outcomes else "passed"
        )
        record(item, final)


_OUTCOMES = pytest.StashKey[list]()
