"""Numbers at the edges of their column's type: audited, shown and fixed exactly.

Single-precision columns (PostgreSQL ``real``, MariaDB ``FLOAT``) are read exactly
(MariaDB's text protocol sends a FLOAT with 6 significant digits) and compared in
their own type; small integer columns take corrections that do not fit their type;
float keys are matched in their own type. Each through the audit, fix.sql and
rollback.sql with the real clients, and drift apply.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from remediate.sql import Step, get_script_dialect, offline_table, step_statement
from tests.remediation_helpers import findings, run_client
from tests.test_remediate_literals import _audited, _ok, _spec

SINGLE = {"postgresql": "REAL", "mysql": "FLOAT"}
DOUBLE = {"postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE", "sqlite": "REAL"}


def _exact_rows(backend, columns: str) -> dict[object, tuple]:
    """ent's rows with ``columns`` read as doubles (a FLOAT read plainly is rounded)."""
    cast = "DOUBLE PRECISION" if backend.name == "postgresql" else "DOUBLE"
    selected = ", ".join(
        f"CAST({c} AS {cast})" if backend.name != "sqlite" else c for c in columns.split(",")
    )
    with backend.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT k, {selected} FROM ent ORDER BY k")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def _found(result) -> dict[tuple[str, str | None], dict]:
    rows = pq.read_table(result.findings_path).to_pylist()
    return {(r["key"], r["column"]): r for r in rows}


def _fix_and_roll_back_both_ways(backend, tmp_path, spec, audit, columns, fixed):
    """fix.sql, rollback.sql, drift apply and drift rollback each land exactly."""
    original = _exact_rows(backend, columns)
    _ok(run_client(backend, audit / "plan" / "fix.sql"))
    assert _exact_rows(backend, columns) == fixed
    assert findings(spec, backend, tmp_path, "fixed") == set()
    _ok(run_client(backend, audit / "plan" / "rollback.sql"))
    assert _exact_rows(backend, columns) == original

    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    approve(audit, "alice")
    apply_plan(audit, backend.url)
    assert _exact_rows(backend, columns) == fixed
    assert findings(spec, backend, tmp_path, "applied") == set()
    approve(audit, "bob", purpose="rollback")
    rollback_plan(audit, backend.url)
    assert _exact_rows(backend, columns) == original


# --------------------------------------------------------------------------- single precision


def test_mariadb_single_floats_are_read_exactly(tmp_path):
    """PyMySQL reads a FLOAT as the server's text, 6 significant digits: 1234568 read as
    1234570, so the finding showed equal values, the cas guard never matched and the
    orphan's delete guard neither."""
    from tests.conftest import make_backend

    gen = make_backend("mysql", tmp_path)
    backend = next(gen)
    try:
        spec, audit = _audited(
            backend,
            tmp_path,
            [
                "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v FLOAT NOT NULL)",
                "CREATE TABLE ent (k INTEGER PRIMARY KEY, hi FLOAT)",
            ],
            [
                "INSERT INTO ev VALUES (1, 1, 1234567), (2, 2, 0.1)",
                "INSERT INTO ent VALUES (1, 1234568), (2, 0.1), (3, 7654321)",
            ],
            {"hi": ("last", "v")},
            delete_orphans=True,
        )
        result = run_audit(spec, out=tmp_path / "again", write_report=False)
        found = _found(result)
        assert set(found) == {("[1]", "hi"), ("[3]", None)}
        assert found["[1]", "hi"]["expected"] == "1234567.0"
        assert found["[1]", "hi"]["actual"] == "1234568.0"
        assert found["[3]", None]["actual"] == '{"hi":7654321.0}'
        evidence = pq.read_table(tmp_path / "again" / "evidence.parquet").to_pylist()
        assert [json.loads(r["row"])["v"] for r in evidence if r["key"] == "[1]"] == [1234567.0]
        fixed = {1: (1234567.0,), 2: (float(Decimal("0.100000001490116119384765625")),)}
        _fix_and_roll_back_both_ways(backend, tmp_path, spec, audit, "hi", fixed)
        # drift apply's history holds the values before and after exactly too.
        with backend.engine.connect() as conn:
            history = conn.exec_driver_sql(
                "SELECT before_value, after_value FROM drift_remediation_rows "
                "WHERE operation = 'fix' AND row_key = '[1]'"
            ).all()
        assert [tuple(row) for row in history] == [("1234568.0", "1234567.0")]
    finally:
        next(gen, None)


def test_single_precision_columns_are_compared_in_their_own_type(server_backend, tmp_path):
    """The application stores a double into a real column: the row is right when the
    rebuilt value, rounded to the column's precision, is what it holds (0.1 + 0.2 in a
    real column is 0.3). A drifted one is fixed to exactly that rounding, by delta too:
    the value read must be the column's exact value (123456.79 in a real column is
    123456.7890625; the correction computed from 123456.79 landed on 0.0990625, not 0.1)."""
    single = SINGLE[server_backend.name]
    spec, audit = _audited(
        server_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, "
            f"v {DOUBLE[server_backend.name]} NOT NULL)",
            f"CREATE TABLE ent (k INTEGER PRIMARY KEY, tot {single}, hi {single})",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 0.1), (2, 2, 0.1), (3, 2, 0.2), (4, 3, 0.1)",
            # Keys 1 and 2 hold their rebuilt values, rounded to single precision.
            "INSERT INTO ent VALUES (1, 0.1, 0.1), (2, 0.3, 0.2), (3, 123456.79, 123456.79)",
        ],
        {"tot": ("sum", "v"), "hi": ("last", "v")},
    )
    result = run_audit(spec, out=tmp_path / "again", write_report=False)
    found = _found(result)
    assert set(found) == {("[3]", "tot"), ("[3]", "hi")}
    assert found["[3]", "tot"]["actual"] == "123456.7890625"
    point_one = float(Decimal("0.100000001490116119384765625"))  # real 0.1
    fixed = {1: (point_one, point_one), 2: (0.30000001192092896, 0.20000000298023224)}
    fixed[3] = (point_one, point_one)
    _fix_and_roll_back_both_ways(server_backend, tmp_path, spec, audit, "tot,hi", fixed)


# --------------------------------------------------------------------------- small integers


def test_corrections_wider_than_the_column_apply(backend, tmp_path):
    """A correction of -40000 to a smallint holding 30000 lands on -10000: the sum is
    computed in a wider type and only the result assigned to the column (drift apply's
    corrections went into a SMALLINT copy of the column: "smallint out of range")."""
    spec, audit = _audited(
        backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, amt BIGINT NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, s SMALLINT NOT NULL, i INTEGER NOT NULL)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, -10000), (2, 2, 32767)",
            "INSERT INTO ent VALUES (1, 30000, 2000000000), (2, -32768, -2147483648)",
        ],
        {"s": ("sum", "amt"), "i": ("sum", "amt")},
    )
    original = _plain_rows(backend)
    _ok(run_client(backend, audit / "plan" / "fix.sql"))
    assert _plain_rows(backend) == {1: (-10000, -10000), 2: (32767, 32767)}
    assert findings(spec, backend, tmp_path, "fixed") == set()
    _ok(run_client(backend, audit / "plan" / "rollback.sql"))
    assert _plain_rows(backend) == original

    write_plan(audit, build_plan(audit))
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 4
    assert _plain_rows(backend) == {1: (-10000, -10000), 2: (32767, 32767)}
    approve(audit, "bob", purpose="rollback")
    assert rollback_plan(audit, backend.url).rows_changed == 4
    assert _plain_rows(backend) == original


def test_a_result_out_of_the_columns_range_is_refused(server_backend, tmp_path):
    """The wider arithmetic never wraps: a result a smallint cannot hold is refused."""
    spec, audit = _audited(
        server_backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, amt INTEGER NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, s SMALLINT NOT NULL, i INTEGER NOT NULL)",
        ],
        ["INSERT INTO ev VALUES (1, 1, 40000)", "INSERT INTO ent VALUES (1, 30000, 0)"],
        {"s": ("sum", "amt"), "i": ("sum", "amt")},
    )
    original = _plain_rows(server_backend)
    result = run_client(server_backend, audit / "plan" / "fix.sql")
    assert result.returncode != 0
    assert b"range" in result.stdout + result.stderr
    assert _plain_rows(server_backend) == original
    if server_backend.name == "mysql":
        # A server whose sql_mode is not strict clipped the result to 32767, silently.
        lax = tmp_path / "lax.sql"
        lax.write_bytes(b"SET SESSION sql_mode = '';\n" + (audit / "plan" / "fix.sql").read_bytes())
        result = run_client(server_backend, lax)
        assert result.returncode != 0
        assert b"range" in result.stdout + result.stderr
        assert _plain_rows(server_backend) == original
    approve(audit, "alice")
    with pytest.raises(Exception, match="range"):
        apply_plan(audit, server_backend.url)
    assert _plain_rows(server_backend) == original
    if server_backend.name == "mysql":
        # drift apply on a connection whose sql_mode is not strict: refused the same way.
        lax_url = sa.engine.make_url(server_backend.url).update_query_dict(
            {"init_command": "SET SESSION sql_mode = ''"}
        )
        with pytest.raises(Exception, match="range"):
            apply_plan(audit, lax_url.render_as_string(hide_password=False))
        assert _plain_rows(server_backend) == original


def _plain_rows(backend) -> dict[object, tuple]:
    with backend.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM ent ORDER BY k")).all()
    return {row[0]: tuple(row[1:]) for row in rows}


# --------------------------------------------------------------------------- float keys


@pytest.mark.parametrize(
    ("name", "type_text", "guard"),
    [
        ("postgresql", "REAL", "ent.k = CAST(0.1 AS REAL)"),
        ("postgresql", "DOUBLE PRECISION", "ent.k = 0.1"),
        ("mysql", "FLOAT", "ent.k = CAST(0.1 AS FLOAT)"),
        ("sqlite", "REAL", "ent.k = 0.1"),
    ],
)
def test_single_precision_keys_are_cast_in_guards(name, type_text, guard):
    script = get_script_dialect(name)
    table = offline_table(
        {
            "name": "ent",
            "columns": [
                {"name": "k", "family": "float", "type": type_text, "nullable": False},
                {"name": "n", "family": "integer", "nullable": True},
            ],
        }
    )
    step = Step(1, "ent", (Decimal("0.1"),), "delta", "n", value=2)
    expected = f"UPDATE ent SET n=(ent.n + 2) WHERE {guard}"
    assert script.compile(step_statement(step, table, ["k"], script)) == expected
    assert script.compile_step(step, table, ["k"]) == expected


def test_single_precision_keys_match(server_backend, tmp_path):
    single = SINGLE[server_backend.name]
    backend = server_backend
    for statement in [
        f"CREATE TABLE ev (id INTEGER PRIMARY KEY, k {single} NOT NULL)",
        f"CREATE TABLE ent (k {single} PRIMARY KEY, n INTEGER NOT NULL)",
        "INSERT INTO ev VALUES (1, 0.1), (2, 0.1), (3, 123456.79)",
        "INSERT INTO ent VALUES (0.1, 5), (123456.79, 0)",
    ]:
        backend.execute(statement)
    spec = parse_spec(_spec(backend, {"n": ("count", None)}))
    audit = tmp_path / "audit"
    run_audit(spec, out=audit, write_report=False)
    write_plan(audit, build_plan(audit))
    _ok(run_client(backend, audit / "plan" / "fix.sql"))
    assert sorted(_plain_rows(backend).values()) == [(1,), (2,)]
    assert findings(spec, backend, tmp_path, "fixed") == set()
    _ok(run_client(backend, audit / "plan" / "rollback.sql"))
    assert sorted(_plain_rows(backend).values()) == [(0,), (5,)]
    write_plan(audit, build_plan(audit))
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 2
    assert sorted(_plain_rows(backend).values()) == [(1,), (2,)]

    # A key written as 0.1 (not as the real's exact 0.100000001490116...) matches too.
    script = get_script_dialect(backend.name)
    with backend.engine.connect() as conn:
        table = sa.Table("ent", sa.MetaData(), autoload_with=conn)
        step = Step(1, "ent", (Decimal("0.1"),), "delta", "n", value=40)
        sql = script.compile(step_statement(step, table, ["k"], script))
        assert conn.exec_driver_sql(sql).rowcount == 1
        conn.rollback()


def test_sqlite_corrections_beyond_64_bits_are_set_not_added(sqlite_backend, tmp_path):
    """SQLite reads an integer literal beyond 64 bits as a REAL: ``b + 18000000000000000001``
    was computed in floating point and stored 9000000000000000000, silently. Such a
    correction is planned as cas (the exact value), never as a delta."""
    backend = sqlite_backend
    spec, audit = _audited(
        backend,
        tmp_path,
        [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, amt INTEGER NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, b INTEGER NOT NULL)",
        ],
        [
            "INSERT INTO ev VALUES (1, 1, 9000000000000000001), (2, 2, 5)",
            "INSERT INTO ent VALUES (1, -9000000000000000000), (2, 3)",
        ],
        {"b": ("sum", "amt")},
    )
    modes = [a["mode"] for a in json.loads((audit / "plan" / "plan.json").read_text())["actions"]]
    assert modes == ["cas", "delta"]
    original = _plain_rows(backend)
    _ok(run_client(backend, audit / "plan" / "fix.sql"))
    assert _plain_rows(backend) == {1: (9000000000000000001,), 2: (5,)}
    _ok(run_client(backend, audit / "plan" / "rollback.sql"))
    assert _plain_rows(backend) == original
    write_plan(audit, build_plan(audit))
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 2
    assert _plain_rows(backend) == {1: (9000000000000000001,), 2: (5,)}


def test_mariadb_single_float_witnesses_are_read_exactly(tmp_path):
    """A witness disagreement between two FLOAT rebuilds was shown as 1234570 vs 1234570."""
    from tests.conftest import make_backend

    gen = make_backend("mysql", tmp_path)
    backend = next(gen)
    try:
        for statement in [
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v FLOAT NOT NULL)",
            "CREATE TABLE ann (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, w FLOAT NOT NULL)",
            "CREATE TABLE ent (k INTEGER PRIMARY KEY, hi FLOAT)",
            "INSERT INTO ev VALUES (1, 1, 1234567)",
            "INSERT INTO ann VALUES (1, 1, 1234568)",
            "INSERT INTO ent VALUES (1, 1234567)",
        ]:
            backend.execute(statement)
        text = _spec(backend, {"hi": ("last", "v")}) + (
            'also = [{ stream = "ann", fold = "last", value = "w" }]\n'
            '[streams.ann]\ntable = "ann"\nkey = ["k"]\norder_by = ["id"]\n'
        )
        result = run_audit(parse_spec(text), out=tmp_path / "a", write_report=False)
        found = pq.read_table(result.findings_path).to_pylist()
        assert [(r["kind"], r["expected"], r["actual"]) for r in found] == [
            ("witness_disagreement", "1234567.0", "1234568.0")
        ]
    finally:
        next(gen, None)
