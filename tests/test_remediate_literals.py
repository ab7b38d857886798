"""Values whose literal or type the engine could read otherwise land exactly.

Tiny and long decimals (MariaDB reads ``1.234E-7`` as a DOUBLE), text under a
non-UTF-8 psql client encoding, single-precision floats (``real`` 0.1 is not the
double 0.1), negative corrections to UNSIGNED columns, and the fraction SQLite
lets an INTEGER column hold: fix.sql and rollback.sql with the real clients, and
drift apply, each land on exactly the expected rows.
"""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from remediate.sql import Step, get_script_dialect, offline_table, step_statement
from tests.remediation_helpers import findings, run_client, table_state


def _spec(backend, columns: dict[str, tuple[str, str | None]]) -> str:
    """One stream ``ev`` (key k, order id) folded into entity ``ent``'s columns."""
    lines = [
        "version = 1",
        "[database]",
        f'url = "{backend.url}"'.replace("\\", "\\\\"),
        "[streams.ev]",
        'table = "ev"',
        'key = ["k"]',
        'order_by = ["id"]',
        "[entities.ent]",
        'table = "ent"',
        'key = ["k"]',
    ]
    for column, (fold, value) in columns.items():
        lines += [f"[entities.ent.columns.{column}]", 'stream = "ev"', f'fold = "{fold}"']
        if value is not None:
            lines.append(f'value = "{value}"')
    return "\n".join(lines) + "\n"


def _audited(
    backend,
    tmp_path: Path,
    ddl: list[str],
    inserts: list[str],
    columns: dict[str, tuple[str, str | None]],
    delete_orphans: bool = False,
):
    for statement in [*ddl, *inserts]:
        backend.execute(statement)
    spec = parse_spec(_spec(backend, columns))
    audit = tmp_path / "audit"
    run_audit(spec, out=audit, write_report=False)
    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=delete_orphans)))
    return spec, audit


def _ent(backend) -> dict[object, tuple]:
    with backend.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM ent")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


# --------------------------------------------------------------------------- decimals


@pytest.mark.parametrize("name", ["postgresql", "mysql", "sqlite"])
def test_decimals_for_numeric_and_integer_columns_are_written_out_in_full(name):
    script = get_script_dialect(name)
    table = offline_table(
        {
            "name": "ent",
            "columns": [
                {"name": "k", "family": "integer", "nullable": False},
                {"name": "total", "family": "numeric", "nullable": True},
                {"name": "n", "family": "integer", "nullable": True},
                {"name": "x", "family": "float", "nullable": True},
            ],
        }
    )

    def delta(column: str, value: Decimal) -> str:
        step = Step(1, "ent", (1,), "delta", column, value=value)
        direct = script.compile(step_statement(step, table, ["k"], script))
        assert script.compile_step(step, table, ["k"]) == direct
        return direct

    assert "+ 0.0000001234)" in delta("total", Decimal("1.234E-7"))
    assert "+ -0.000000000000000000000000000001)" in delta("total", Decimal("-1E-30"))
    assert "+ 123456789012345678900000)" in delta("total", Decimal("1.234567890123456789E+23"))
    assert "+ -0)" in delta("total", Decimal("-0"))
    assert "+ -0.00)" in delta("total", Decimal("-0.00"))
    # A fraction in an integer column (SQLite) is not truncated; whole numbers stay ints.
    assert "+ 1.5)" in delta("n", Decimal("1.5"))
    assert "+ -0.25)" in delta("n", Decimal("-2.5E-1"))
    assert "+ 1200)" in delta("n", Decimal("1.2E+3"))
    # A float column's value is a double: the exponent form is its literal.
    assert "+ 1.234E-7)" in delta("x", Decimal("1.234E-7"))

    cas = Step(1, "ent", (1,), "cas", "total", value=Decimal("-9.87E-8"), observed=Decimal("1E-9"))
    sql = script.compile_step(cas, table, ["k"])
    assert sql.endswith("SET total=-0.0000000987 WHERE ent.k = 1 AND ent.total = 0.000000001")


def test_tiny_decimal_corrections_land_exactly(server_backend, tmp_path):
    # MariaDB read 1.234E-7 as a DOUBLE: total + 1.234E-7 was computed in double and
    # rounded into the DECIMAL column (...9124 became ...9120), and a cas wrote the
    # double nearest to its value.
    _, audit = _audited(
        server_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, "
            "amt DECIMAL(30,10) NOT NULL, tiny DECIMAL(38,30) NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, total DECIMAL(30,10), tiny DECIMAL(38,30))",
        ],
        [
            "INSERT INTO ev VALUES "
            "(1, 1, 12345678.1234567890, 0), "
            "(2, 1, 0.0000001234, 0.000000123456789012345678901234), "
            "(3, 2, -12345678.1234567890, 0), "
            "(4, 2, -0.0000001234, -0.000000987654321098765432109876)",
            "INSERT INTO ent VALUES "
            "(1, 12345678.1234567890, 0.000000100000000000000000000001), "
            "(2, -12345678.1234567890, -0.000000100000000000000000000001)",
        ],
        {"total": ("sum", "amt"), "tiny": ("last", "tiny")},
    )
    original = _ent(server_backend)
    _ok(run_client(server_backend, audit / "plan" / "fix.sql"))
    assert _ent(server_backend) == {
        1: (Decimal("12345678.1234569124"), Decimal("0.000000123456789012345678901234")),
        2: (Decimal("-12345678.1234569124"), Decimal("-0.000000987654321098765432109876")),
    }
    _ok(run_client(server_backend, audit / "plan" / "rollback.sql"))
    assert _ent(server_backend) == original


# --------------------------------------------------------------------------- encodings


def test_the_postgres_script_is_read_as_utf8_whatever_the_client_encoding(postgres, tmp_path):
    # psql sends the file's bytes in its client encoding (locale, PGCLIENTENCODING):
    # under LATIN1 'café ✓' was stored as 'cafÃ© â\x9c\x93' and the script exited 0.
    spec, audit = _audited(
        postgres,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, s TEXT NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, note TEXT)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 'old'), (2, 1, 'café ✓ \U0001f600'), (3, 2, 'naïve')",
            "INSERT INTO ent VALUES (1, 'old')",
        ],
        {"note": ("last", "s")},
    )
    original = table_state(postgres, "ent")
    command, env = postgres.client_command()
    env["PGCLIENTENCODING"] = "LATIN1"

    def run(script: str) -> None:
        path = audit / "plan" / script
        _ok(subprocess.run([*command, "-f", str(path)], env=env, capture_output=True, timeout=120))

    run("fix.sql")
    assert _ent(postgres) == {1: ("café ✓ \U0001f600",), 2: ("naïve",)}
    assert findings(spec, postgres, tmp_path, "after") == set()
    run("rollback.sql")
    assert table_state(postgres, "ent") == original


# --------------------------------------------------------------------------- single precision

SINGLE = {"postgresql": "REAL", "mysql": "FLOAT"}


@pytest.mark.parametrize(
    ("name", "type_text", "guard"),
    [
        ("postgresql", "REAL", "ent.hi = CAST(0.1 AS REAL)"),
        ("postgresql", "DOUBLE PRECISION", "ent.hi = 0.1"),
        ("mysql", "FLOAT", "ent.hi = CAST(0.1 AS FLOAT)"),
        ("mysql", "FLOAT UNSIGNED", "ent.hi = CAST(0.1 AS FLOAT)"),
        ("mysql", "DOUBLE", "ent.hi = 0.1"),
        ("sqlite", "REAL", "ent.hi = 0.1"),  # SQLite's REAL is a double
    ],
)
def test_single_precision_guards_cast_the_value(name, type_text, guard):
    script = get_script_dialect(name)
    table = offline_table(
        {
            "name": "ent",
            "columns": [
                {"name": "k", "family": "integer", "nullable": False},
                {"name": "hi", "family": "float", "type": type_text, "nullable": True},
            ],
        }
    )
    cas = Step(1, "ent", (1,), "cas", "hi", value=Decimal("0.7"), observed=Decimal("0.1"))
    delete = Step(1, "ent", (2,), "delete", row={"k": 2, "hi": Decimal("0.1")})
    for step, expected in [
        (cas, f"UPDATE ent SET hi=0.7 WHERE ent.k = 1 AND {guard}"),
        (delete, f"DELETE FROM ent WHERE ent.k = 2 AND {guard}"),
    ]:
        assert script.compile(step_statement(step, table, ["k"], script)) == expected
        assert script.compile_step(step, table, ["k"]) == expected


def test_single_precision_guards_match(server_backend, tmp_path):
    # real 0.1 is 0.100000001490116...: compared with the double (or numeric) 0.1 the
    # cas guard never matched (a false "row changed since the audit") and an orphan
    # row with a real column could be deleted by neither fix.sql nor drift apply.
    real = SINGLE[server_backend.name]
    spec, audit = _audited(
        server_backend,
        tmp_path,
        [
            f"CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v {real} NOT NULL)",
            f"CREATE TABLE ent (k INTEGER PRIMARY KEY, hi {real})",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 0.1), (2, 1, 0.7), (3, 2, 0.3)",
            "INSERT INTO ent VALUES (1, 0.1), (2, 0.3), (3, 0.1)",
        ],
        {"hi": ("max", "v")},
        delete_orphans=True,
    )
    original = table_state(server_backend, "ent")
    assert len(findings(spec, server_backend, tmp_path, "before")) == 2

    _ok(run_client(server_backend, audit / "plan" / "fix.sql"))
    assert findings(spec, server_backend, tmp_path, "fixed") == set()
    assert sorted(_ent(server_backend)) == [1, 2]
    # rollback.sql's guards compare with the values fix.sql wrote (0.7, the deleted row).
    _ok(run_client(server_backend, audit / "plan" / "rollback.sql"))
    assert table_state(server_backend, "ent") == original

    # drift apply (a new plan of the same audit), and its rollback.
    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    assert apply_plan(audit, server_backend.url).rows_changed == 2
    assert findings(spec, server_backend, tmp_path, "applied") == set()
    approve(audit, "bob", purpose="rollback")
    assert rollback_plan(audit, server_backend.url).rows_changed == 2
    assert table_state(server_backend, "ent") == original


# --------------------------------------------------------------------------- unsigned


def test_negative_deltas_on_unsigned_columns_apply_and_roll_back(mariadb, tmp_path):
    # drift apply's temp table copied the column's type for the corrections: an
    # UNSIGNED copy cannot hold -3 ("Out of range value for column 'val'"), nor the
    # rollback's -2 of a positive delta.
    spec, audit = _audited(
        mariadb,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, "
            "amt DECIMAL(10,2) UNSIGNED NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, cnt INT UNSIGNED NOT NULL, "
            "big BIGINT UNSIGNED NOT NULL, total DECIMAL(10,2) UNSIGNED NOT NULL)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 1.25), (2, 1, 0.75), (3, 2, 99999999.99), (4, 2, 0)",
            # Key 1 counted and summed too high (negative deltas), key 2 too low.
            "INSERT INTO ent VALUES (1, 5, 18446744073709551615, 7.50), (2, 0, 0, 0)",
        ],
        {"cnt": ("count", None), "big": ("count", None), "total": ("sum", "amt")},
    )
    original = table_state(mariadb, "ent")
    approve(audit, "alice")
    assert apply_plan(audit, mariadb.url).rows_changed == 6
    assert _ent(mariadb) == {1: (2, 2, Decimal("2.00")), 2: (2, 2, Decimal("99999999.99"))}
    assert findings(spec, mariadb, tmp_path, "after") == set()
    approve(audit, "bob", purpose="rollback")
    assert rollback_plan(audit, mariadb.url).rows_changed == 6
    assert table_state(mariadb, "ent") == original


# --------------------------------------------------------------------------- integer fractions


def test_a_fraction_in_an_integer_column_is_never_truncated(sqlite_backend, tmp_path):
    # SQLite lets an INTEGER column hold 10.5: the scripts wrote int(1.5) = 1 for the
    # correction (and a cas guard's 7.5 as 7), drift apply could not bind a Decimal.
    spec, audit = _audited(
        sqlite_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, "
            "amt INTEGER NOT NULL, v INTEGER NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, total INTEGER, last_v INTEGER)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 10, 1), (2, 1, 2, 3)",
            "INSERT INTO ent VALUES (1, 10.5, 7.5)",
        ],
        {"total": ("sum", "amt"), "last_v": ("last", "v")},
    )
    original = table_state(sqlite_backend, "ent")
    _ok(run_client(sqlite_backend, audit / "plan" / "fix.sql"))
    assert _ent(sqlite_backend) == {1: (12, 3)}
    _ok(run_client(sqlite_backend, audit / "plan" / "rollback.sql"))
    assert table_state(sqlite_backend, "ent") == original

    write_plan(audit, build_plan(audit))
    approve(audit, "alice")
    assert apply_plan(audit, sqlite_backend.url).rows_changed == 2
    assert _ent(sqlite_backend) == {1: (12, 3)}
    assert findings(spec, sqlite_backend, tmp_path, "after") == set()
    approve(audit, "bob", purpose="rollback")
    rollback_plan(audit, sqlite_backend.url)
    assert table_state(sqlite_backend, "ent") == original
