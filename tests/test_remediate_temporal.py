"""Dates, times and datetimes in plans land exactly, with every client and drift apply.

Plans hold temporal values as text (ISO on PostgreSQL and MariaDB, the stored
text on SQLite). Compared as text, MariaDB's DATETIME ('2026-01-01 10:00:00')
never equalled the plan's '2026-01-01T10:00:00', so every guard missed; on SQLite
the plan held SQLAlchemy's re-formatting of what the application stored, so
guards missed and inserts wrote another text than the streams'. Each case runs
fix.sql and rollback.sql with the real client, then drift apply and its rollback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, load_plan, write_plan
from remediate.sql import Step, get_script_dialect, offline_table, step_statement
from remediate.verify import verify_plan
from tests.remediation_helpers import findings, run_client, table_state
from tests.test_remediate_literals import _audited, _ent, _ok


def _run(backend, script: Path, extra: list[str] | None = None, env: dict | None = None):
    command, base_env = backend.client_command()
    if extra:  # options go before the database name (mariadb) or anywhere (psql)
        command = [command[0], *extra, *command[1:]]
    return subprocess.run(
        command,
        input=script.read_bytes(),
        env=base_env | (env or {}),
        capture_output=True,
        timeout=120,
    )


def _temporal_case(backend, tmp_path: Path, type_: str, values: tuple[str, str, str]):
    """Key 1 drifted (cas), key 2 missing (insert), key 3 an orphan (delete)."""
    first, second, third = values
    return _audited(
        backend,
        tmp_path,
        [
            f"CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, at {type_} NOT NULL)",
            f"CREATE TABLE ent (k INTEGER PRIMARY KEY, last_at {type_})",
        ],
        [
            f"INSERT INTO ev VALUES (1, 1, '{first}'), (2, 1, '{second}'), (3, 2, '{third}')",
            f"INSERT INTO ent VALUES (1, '{first}'), (3, '{third}')",
        ],
        {"last_at": ("last", "at")},
        delete_orphans=True,
    )


def _fix_and_roll_back(backend, tmp_path: Path, spec, audit: Path, run=run_client) -> None:
    """fix.sql, rollback.sql, then drift apply and drift rollback: each lands exactly."""
    original = table_state(backend, "ent")
    before = findings(spec, backend, tmp_path, "before")
    assert {(f[1], f[3]) for f in before} == {
        ("[1]", "mismatch"),
        ("[2]", "missing_row"),
        ("[3]", "orphan_row"),
    }
    _ok(run(backend, audit / "plan" / "fix.sql"))
    assert verify_plan(audit, backend.url).clean
    assert findings(spec, backend, tmp_path, "fixed") == set()
    assert sorted(_ent(backend)) == [1, 2]
    fixed = table_state(backend, "ent")
    _ok(run(backend, audit / "plan" / "rollback.sql"))
    assert table_state(backend, "ent") == original

    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 3
    assert findings(spec, backend, tmp_path, "applied") == set()
    assert table_state(backend, "ent") == fixed
    approve(audit, "bob", purpose="rollback")
    assert rollback_plan(audit, backend.url).rows_changed == 3
    assert table_state(backend, "ent") == original


# --------------------------------------------------------------------------- rendering


V = "'2026-01-01T10:00:00'"


@pytest.mark.parametrize(
    ("name", "family", "assigned", "guard"),
    [
        ("mysql", "datetime", f"CAST({V} AS DATETIME(6))", f"ent.at = CAST({V} AS DATETIME(6))"),
        ("mysql", "date", f"CAST({V} AS DATE)", f"ent.at = CAST({V} AS DATE)"),
        ("mysql", "time", f"CAST({V} AS TIME(6))", f"ent.at = CAST({V} AS TIME(6))"),
        ("postgresql", "datetime", V, f"ent.at = {V}"),
        ("sqlite", "datetime", V, f'ent.at = ({V} COLLATE "BINARY")'),
    ],
)
def test_temporal_values_are_compared_and_assigned_as_the_column_type(
    name, family, assigned, guard
):
    script = get_script_dialect(name)
    table = offline_table(
        {
            "name": "ent",
            "columns": [
                {"name": "k", "family": "integer", "nullable": False},
                {"name": "at", "family": family, "nullable": True},
            ],
        }
    )
    value = "2026-01-01T10:00:00"
    cas = Step(1, "ent", (1,), "cas", "at", value=value, observed=value)
    delete = Step(1, "ent", (2,), "delete", row={"k": 2, "at": value})
    insert = Step(1, "ent", (2,), "insert", row={"k": 2, "at": value})
    for step, expected in [
        (cas, f"UPDATE ent SET at={assigned} WHERE ent.k = 1 AND {guard}"),
        (delete, f"DELETE FROM ent WHERE ent.k = 2 AND {guard}"),
    ]:
        assert script.compile(step_statement(step, table, ["k"], script)) == expected
        assert script.compile_step(step, table, ["k"]) == expected
    assert f"{assigned} AS at" in script.compile_step(insert, table, ["k"])


# --------------------------------------------------------------------------- MariaDB

MARIADB_CASES = {
    "DATETIME": ("2026-01-01 10:00:00", "2026-01-02 11:00:00", "2026-01-03 12:00:00"),
    "DATETIME(6)": (
        "2026-01-01 10:00:00.000001",
        "2026-01-02 11:00:00.123456",
        "2026-01-03 12:00:00.5",
    ),
    "TIMESTAMP": ("2026-01-01 10:00:00", "2026-01-02 11:00:00", "2026-01-03 12:00:00"),
    "TIMESTAMP(3)": ("2026-01-01 10:00:00.001", "2026-01-02 11:00:00.5", "2026-01-03 12:00:00"),
    "DATE": ("2026-01-01", "2026-01-02", "2026-01-03"),
    # Python writes timedelta(hours=1) as '1:00:00'; MariaDB's TIME text is '01:00:00'.
    "TIME": ("01:00:00", "11:00:00", "02:30:00"),
    "TIME(6)": ("01:00:00.25", "11:00:00.000001", "23:59:59.999999"),
    # A TIME is a duration: Python wrote these '-1 day, 23:00:00' and '1 day, 2:00:00.5',
    # which MariaDB casts (with a warning only) to -00:00:01 and 00:00:01.
    "TIME(1)": ("-01:00:00", "26:00:00.5", "838:59:59"),
}


@pytest.mark.parametrize("type_", list(MARIADB_CASES))
def test_mariadb_temporal_columns_fix_and_roll_back(mariadb, tmp_path, type_):
    # fix.sql compared CAST(col AS CHAR) with the plan's ISO text: '2026-01-01 10:00:00'
    # never equals '2026-01-01T10:00:00', so every cas and delete guard missed.
    spec, audit = _temporal_case(mariadb, tmp_path, type_, MARIADB_CASES[type_])
    _fix_and_roll_back(mariadb, tmp_path, spec, audit)


def test_mariadb_timestamps_keep_their_instant_whatever_the_client_time_zone(mariadb, tmp_path):
    # A TIMESTAMP reads and is written in the session's time zone. The audit read
    # '10:00:00' in the server's zone; a client session at +05:00 compared (and would
    # insert) 10:00 +05:00, another instant. The plan records the audit's time zone
    # and both the scripts and drift apply use it.
    spec, audit = _temporal_case(
        mariadb,
        tmp_path,
        "TIMESTAMP",
        ("2026-01-01 10:00:00", "2026-01-02 11:00:00", "2026-01-03 12:00:00"),
    )
    assert load_plan(audit).fingerprint["time_zone"] == mariadb.scalar("SELECT @@session.time_zone")

    def elsewhere(backend, script: Path) -> subprocess.CompletedProcess:
        return _run(backend, script, ["--init-command=SET time_zone = '+05:00'"])

    original = table_state(mariadb, "ent")
    _ok(elsewhere(mariadb, audit / "plan" / "fix.sql"))
    assert findings(spec, mariadb, tmp_path, "fixed") == set()
    _ok(elsewhere(mariadb, audit / "plan" / "rollback.sql"))
    assert table_state(mariadb, "ent") == original

    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    url = f"{mariadb.url}?init_command=SET time_zone %3D '%2B05:00'"
    assert apply_plan(audit, url, target_override="same database").rows_changed == 3
    assert findings(spec, mariadb, tmp_path, "applied") == set()


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_CASES = {
    "TIMESTAMP": ("2026-01-01 10:00:00", "2026-01-02 11:00:00.123456", "2026-01-03 12:00:00"),
    "TIMESTAMPTZ": (
        "2026-01-01 10:00:00+00",
        "2026-01-02 11:00:00.5+02",
        "2026-01-03 12:00:00-03:30",
    ),
    "DATE": ("2026-01-01", "2026-01-02", "2026-01-03"),
    "TIME": ("01:00:00", "11:00:00.000001", "23:59:59"),
    "TIMETZ": ("01:00:00+00", "11:00:00+05:30", "23:59:59-01"),
}


@pytest.mark.parametrize("type_", list(POSTGRES_CASES))
def test_postgres_temporal_columns_fix_and_roll_back_in_another_time_zone(
    postgres, tmp_path, type_
):
    # PostgreSQL reads the untyped literal as the column's type; a timestamptz's text
    # carries its offset, so psql's TimeZone (here not the audit's UTC) changes nothing.
    spec, audit = _temporal_case(postgres, tmp_path, type_, POSTGRES_CASES[type_])

    def elsewhere(backend, script: Path) -> subprocess.CompletedProcess:
        return _run(backend, script, env={"PGTZ": "Asia/Kathmandu"})

    _fix_and_roll_back(postgres, tmp_path, spec, audit, run=elsewhere)


# --------------------------------------------------------------------------- SQLite


def test_sqlite_dates_are_read_compared_and_written_as_stored_text(sqlite_backend, tmp_path):
    # SQLAlchemy parsed each DATETIME and the plan held its isoformat(): a cas guard
    # compared '2026-01-01T10:00:00' with the stored '2026-01-01 10:00:00' and missed,
    # and an insert wrote the 'T' text, which drift verify still reported as drift.
    # The audit now reads the stored text: a row whose text differs from the stream's
    # shows that difference, where both sides used to read as the same datetime.
    spec, audit = _temporal_case(
        sqlite_backend,
        tmp_path,
        "DATETIME",
        ("2026-01-01 10:00:00", "2026-01-02 11:00:00.5", "2026-01-03T12:00:00"),
    )
    rows = {r["key"]: r for r in pq.read_table(audit / "findings.parquet").to_pylist()}
    assert rows["[1]"]["expected"] == '"2026-01-02 11:00:00.5"'
    assert rows["[1]"]["actual"] == '"2026-01-01 10:00:00"'
    assert rows["[2]"]["expected"] == '{"last_at":"2026-01-03T12:00:00"}'
    _fix_and_roll_back(sqlite_backend, tmp_path, spec, audit)
    assert _ent(sqlite_backend) == {1: ("2026-01-01 10:00:00",), 3: ("2026-01-03T12:00:00",)}


def test_sqlite_date_texts_that_differ_are_findings_that_show_it(sqlite_backend, tmp_path):
    # The same instant stored in two formats: SQLite compares the texts (a finding), and
    # the finding showed two equal datetimes. The fix writes the stream's text.
    spec, audit = _audited(
        sqlite_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, at DATETIME NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, last_at DATETIME)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, '2026-01-01 10:00:00')",
            "INSERT INTO ent VALUES (1, '2026-01-01T10:00:00')",
        ],
        {"last_at": ("last", "at")},
    )
    (row,) = pq.read_table(audit / "findings.parquet").to_pylist()
    assert (row["expected"], row["actual"]) == ('"2026-01-01 10:00:00"', '"2026-01-01T10:00:00"')
    _ok(run_client(sqlite_backend, audit / "plan" / "fix.sql"))
    assert _ent(sqlite_backend) == {1: ("2026-01-01 10:00:00",)}
    assert findings(spec, sqlite_backend, tmp_path, "fixed") == set()


def test_sqlite_an_inserted_date_is_the_streams_text(sqlite_backend, tmp_path):
    # fix.sql inserted isoformat()'s '2026-01-03T12:00:00' for the stream's
    # '2026-01-03 12:00:00': it exited 0 and logged "applied", and drift verify (SQLite
    # compares the texts) still reported the row.
    spec, audit = _audited(
        sqlite_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, at DATETIME NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, last_at DATETIME)",
        ],
        ["INSERT INTO ev VALUES (1, 2, '2026-01-03 12:00:00')"],
        {"last_at": ("last", "at")},
    )
    _ok(run_client(sqlite_backend, audit / "plan" / "fix.sql"))
    assert _ent(sqlite_backend) == {2: ("2026-01-03 12:00:00",)}
    assert verify_plan(audit, sqlite_backend.url).clean
