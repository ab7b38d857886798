"""On PostgreSQL, drift apply loads its temp tables and history rows with COPY.

COPY sends each value as text for the column's input function; the INSERT path
(MariaDB, SQLite, and PostgreSQL whenever COPY could differ) sends it typed and
casts. These tests pin that the two store exactly the same thing: value by
value against a table of every type family, and end to end, applying the same
plan both ways.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from remediate.apply import apply_plan, rollback_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from remediate.sql import PostgresScript, ScriptDialect, type_family
from tests.conftest import make_backend

TEXTS = [
    "plain",
    "",
    "O'Brien\"; DROP TABLE x;--",
    "back\\slash\\ \\N \\\\N",
    "\\N",
    "tab\there\tand\\t",
    "line1\nline2\r\nend\r",
    "ctl \x01\x07\x1b[0m\x7f",
    "emoji \U0001f600 \U0001d11e ✓ é",
    "50% %s %(x)s %%",
    "trailing   ",
]

# Per column: values that COPY must store exactly as the INSERT does (or, where
# COPY refuses them, that the INSERT path then takes).
CANDIDATES: dict[str, list[object]] = {
    "i": [0, -1, 2**31 - 1, 2**31, "42", " 7 ", Decimal("2.5"), Decimal("3"), True, 1.5],
    "b": [2**63 - 1, -(2**63), 2**63, Decimal("1E+3")],
    "n": [
        Decimal("12.3456"),
        Decimal("-0.0005"),
        Decimal("-0"),
        Decimal("1E+3"),
        Decimal("NaN"),
        7,
        "1.25",
        0.1,
    ],
    "nu": [Decimal("0.1000"), Decimal("-1E-20"), Decimal("123456789012345678901234567890.5")],
    "f": [
        Decimal("0.1"),
        Decimal("-0"),
        Decimal("-0.0"),
        Decimal("0"),
        Decimal("1E-300"),
        Decimal("1E-400"),
        Decimal("1.7976931348623157E+308"),
        Decimal("9007199254740993"),
        Decimal("NaN"),
        Decimal("Infinity"),
        2**53 + 1,
        "-0",
        0.5,
    ],
    "r": [Decimal("0.1"), Decimal("-0"), Decimal("16777217"), 16777217, "3.4e38"],
    "s": [*TEXTS, 5, Decimal("1E+2"), True],
    "v": ["x" * 20, "x" * 21, "y" * 20 + "  ", *TEXTS[:4]],
    "c": ["ab", "abcde", "abcde  ", "abcdef"],
    "bo": [True, False, "t", "yes", 1],
    "ts": ["2024-02-29T23:59:59.9995", "2024-02-29 23:59:59.123456", "infinity", "2024-13-01"],
    "tz": ["2024-02-29T23:59:59.999999+05:30", "2024-06-01 12:00:00Z"],
    "d": ["2024-02-29", "2023-02-29", "-infinity"],
    "tm": ["23:59:59.9999995", "12:00"],
}
REFUSED = {  # values COPY would store differently (or reject where the INSERT does not)
    ("i", Decimal("2.5")),
    ("i", Decimal("3")),
    ("i", True),
    ("i", 1.5),
    ("b", Decimal("1E+3")),
    ("n", 0.1),
    ("f", Decimal("-0")),
    ("f", Decimal("-0.0")),
    ("f", 0.5),
    ("r", Decimal("-0")),
    ("s", 5),
    ("s", Decimal("1E+2")),
    ("s", True),
    ("bo", "t"),
    ("bo", "yes"),
    ("bo", 1),
}

TYPES_DDL = (
    "(id integer PRIMARY KEY, i integer, b bigint, n numeric(12,3), nu numeric, "
    "f double precision, r real, s text, v varchar(20), c char(5), bo boolean, "
    "ts timestamp(3), tz timestamptz, d date, tm time(6))"
)


def _outcome(conn: sa.Connection, write, column: str) -> tuple[str, str | None]:
    """("stored", the value as text), ("error", None) or ("refused", None); undone after."""
    savepoint = conn.begin_nested()
    try:
        if not write():
            savepoint.rollback()
            return ("refused", None)
    except sa.exc.StatementError:  # the database's error, or SQLAlchemy's bind processor's
        savepoint.rollback()
        return ("error", None)
    stored = conn.execute(sa.text(f"SELECT {column}::text FROM vals WHERE id = 1")).scalar_one()
    savepoint.rollback()
    return ("stored", stored)


def test_copy_stores_each_value_exactly_as_the_insert(postgres):
    script = PostgresScript()
    with postgres.engine.connect() as conn:
        conn.execute(sa.text(f"SET TIME ZONE 'Europe/Paris'; CREATE TABLE vals {TYPES_DDL}"))
        table = sa.Table("vals", sa.MetaData(), autoload_with=conn)
        families = [type_family(c.type) for c in table.columns]
        names = [c.name for c in table.columns]
        refused, outcomes = set(), set()
        for column, values in CANDIDATES.items():
            for value in values:
                row = tuple(1 if n == "id" else value if n == column else None for n in names)

                def by_copy(row=row) -> bool:
                    return script.copy_rows(conn, table, families, [row])

                def by_insert(row=row) -> bool:
                    conn.execute(table.insert(), [dict(zip(names, row))])
                    return True

                via_copy = _outcome(conn, by_copy, column)
                if via_copy[0] == "refused":
                    refused.add((column, value))
                    continue
                outcomes.add(via_copy[0])
                assert via_copy == _outcome(conn, by_insert, column), (column, value)
        assert refused == REFUSED
        assert outcomes == {"stored", "error"}  # both routes reject the same bad values
        # One refused value sends the whole batch to the INSERT path: nothing is copied.
        rows = [(1, 1, *[None] * 13), (2, None, None, None, None, Decimal("-0"), *[None] * 9)]
        assert script.copy_rows(conn, table, families, rows) is False
        assert conn.execute(sa.text("SELECT count(*) FROM vals")).scalar_one() == 0


def test_a_failed_copy_is_an_sqlalchemy_error_and_a_lost_connection_is_invalidated(postgres):
    script = PostgresScript()
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("v", sa.String(3)))
    with postgres.engine.connect() as conn:
        conn.execute(sa.text("CREATE TEMPORARY TABLE t (id integer, v varchar(3))"))
        with pytest.raises(sa.exc.DataError) as bad:
            script.copy_rows(conn, table, ["integer", "string"], [(1, "abcd")])
        assert not bad.value.connection_invalidated and "COPY" in str(bad.value)
        conn.rollback()
        conn.execute(sa.text("CREATE TEMPORARY TABLE t (id integer, v varchar(3))"))
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admin.dispose()
        with pytest.raises(sa.exc.OperationalError) as lost:
            script.copy_rows(conn, table, ["integer", "string"], [(1, "abc")])
        assert lost.value.connection_invalidated and conn.invalidated
        conn.rollback()  # as after any lost connection: nothing to roll back, no new error


def test_only_postgresql_with_psycopg_copies():
    for name in ("mysql", "sqlite"):
        assert type(get_script(name)).copy_rows is ScriptDialect.copy_rows


def get_script(name: str) -> ScriptDialect:
    from remediate.sql import get_script_dialect

    return get_script_dialect(name)


# --------------------------------------------------------------------------- end to end

SPEC = """\
version = 1
[database]
url = "{url}"
[streams.ev]
table = "ev"
key = ["k"]
order_by = ["id"]
[entities.ent]
table = "ent"
key = ["k"]
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "num"
[entities.ent.columns.cnt]
stream = "ev"
fold = "count"
"""
LAST = ("txt", "num", "flt", "big", "ts", "tz", "d", "flag")
SPEC += "".join(
    f'[entities.ent.columns.{c}]\nstream = "ev"\nfold = "last"\nvalue = "{c}"\n' for c in LAST
)
EV_DDL = (
    "CREATE TABLE ev (id integer PRIMARY KEY, k varchar(100) NOT NULL, txt text, "
    "num numeric(14,4), flt double precision, big bigint, ts timestamp, tz timestamptz, "
    "d date, flag boolean)"
)
ENT_DDL = (
    "CREATE TABLE ent (k varchar(100) PRIMARY KEY, total numeric(16,4), cnt integer, txt text, "
    "num numeric(14,4), flt double precision, big bigint, ts timestamp, tz timestamptz, "
    "d date, flag boolean)"
)


def _shop(backend) -> None:
    """Every key drifted in every column, to values of every family, NULLs both ways."""
    events, rows = [], []
    for i, key in enumerate([*TEXTS, "\U0001f600 key", "k\\N"]):
        last = {
            "txt": TEXTS[-1 - i % len(TEXTS)],
            "num": Decimal(f"{i}.{i:04d}") * (-1) ** i,
            "flt": [0.1, 1e-300, 2.5e15 + 0.5, -3.75, 1 / 3][i % 5],
            "big": 2**62 + i,
            "ts": f"2024-02-{i % 28 + 1:02d} 23:59:59.{i:06d}",
            "tz": f"2024-06-01 12:00:0{i % 10}+05:30",
            "d": f"2023-12-{i % 31 + 1:02d}",
            "flag": i % 2 == 0,
        }
        if i % 4 == 1:  # the last event's value is NULL: the row must become NULL
            last |= {"txt": None, "flt": None, "ts": None, "flag": None}
        events.append({"id": 2 * i, "k": key, "num": Decimal("1.5"), "txt": "old"})
        events.append({"id": 2 * i + 1, "k": key, **last})
        row = {
            "k": key,
            "total": Decimal("99.0001"),
            "cnt": 7,
            "txt": "stale'\\",
            "num": Decimal("-1.0000"),
            "flt": 9.5,
            "big": -1,
            "ts": "1999-01-01 00:00:00",
            "tz": "1999-01-01 00:00:00+00",
            "d": "1999-01-01",
            "flag": i % 2 == 1,
        }
        if i % 4 == 2:  # the current value is NULL: the guard compares with NULL
            row |= {"txt": None, "num": None, "flt": None, "big": None, "d": None, "flag": None}
        rows.append(row)
    with backend.engine.begin() as conn:
        conn.execute(sa.text(EV_DDL))
        conn.execute(sa.text(ENT_DDL))
        ev = sa.Table("ev", sa.MetaData(), autoload_with=conn)
        ent = sa.Table("ent", sa.MetaData(), autoload_with=conn)
        names = [c.name for c in ev.columns]
        conn.execute(ev.insert(), [{n: e.get(n) for n in names} for e in events])
        conn.execute(ent.insert(), rows)


def _applied_both_ways(backend, folder: Path, copy: bool, monkeypatch) -> dict[str, list]:
    """Audit, plan (--cas), apply and roll back; the state after each, as text."""
    _shop(backend)
    spec = parse_spec(SPEC.format(url=backend.url))
    run_audit(spec, out=folder, write_report=False)
    write_plan(folder, build_plan(folder, PlanOptions(all_cas=False)))
    approve(folder, "alice")
    approve(folder, "bob", purpose="rollback")
    calls: list[bool] = []
    real = PostgresScript.copy_rows

    def copy_rows(self, conn, table, families, rows):  # type: ignore[no-untyped-def]
        calls.append(copied := copy and real(self, conn, table, families, rows))
        return copied

    with monkeypatch.context() as patch:
        patch.setattr(PostgresScript, "copy_rows", copy_rows)
        applied = apply_plan(folder, backend.url)
        state = {"fix": _state(backend)}
        rollback_plan(folder, backend.url)
        state["rollback"] = _state(backend)
    # Each (column, mode) group's temp table and the history rows, both operations.
    groups = len({(c["column"], c["mode"]) for c in applied.changes})
    assert calls == [copy] * (2 * (groups + 1))
    assert applied.rows_changed == 13 * 10
    return state


def _state(backend) -> dict[str, list]:
    with backend.engine.connect() as conn:
        ent = sa.Table("ent", sa.MetaData(), autoload_with=conn)
        rows = conn.execute(
            sa.select(*(sa.cast(c, sa.Text) for c in ent.columns)).order_by(ent.c.k)
        ).all()
        history = conn.execute(
            sa.text(
                "SELECT operation, action_id, batch_no, entity, row_key, column_name, "
                "before_value, after_value FROM drift_remediation_rows "
                "ORDER BY operation, action_id"
            )
        ).all()
    return {"ent": [tuple(r) for r in rows], "history": [tuple(r) for r in history]}


def test_apply_by_copy_equals_apply_by_insert(tmp_path, monkeypatch):
    backends = [make_backend("postgresql", tmp_path / name) for name in ("copy", "insert")]
    try:
        copied, inserted = (
            _applied_both_ways(next(b), tmp_path / f"audit-{i}", i == 0, monkeypatch)
            for i, b in enumerate(backends)
        )
        assert copied == inserted
        # And what the plan said: each row's recorded after value is the planned one.
        plan = json.loads((tmp_path / "audit-0" / "plan" / "plan.json").read_text())
        planned = {a["id"]: a for a in plan["actions"]}
        fixes = copied["fix"]["history"]
        assert len(fixes) == len(planned)
        for _op, action_id, _batch, _entity, key, column, before, after in fixes:
            action = planned[action_id]
            assert (key, column) == (action["key"], action["column"])
            if action["column"] in ("txt", "big", "num", "total", "cnt", "d", "flag"):
                assert json.loads(before) == action["before"]
                assert json.loads(after) == action["after"]
    finally:
        for b in backends:
            b.close()
