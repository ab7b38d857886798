"""Every fold, tolerance, NULL rule and finding kind, on SQLite, PostgreSQL and MariaDB.

Each test documents its tiny data set and the exact findings it must produce.
"""

from __future__ import annotations

import json
import warnings

import pytest
import sqlalchemy as sa

from audit.errors import SpecError
from audit.schema import bind_spec
from audit.spec import parse_spec
from tests.conftest import make_backend
from tests.shop import audit, brief, load

A1, A2 = ("a", 1), ("a", 2)

EVENTS = [
    {"k1": "a", "k2": 1, "v": 5, "s": "x", "t": "2026-01-01T00:00:01"},
    {"k1": "a", "k2": 1, "v": 3, "s": "y", "t": "2026-01-01T00:00:02"},
    {"k1": "a", "k2": 2, "v": 10, "s": "z", "t": "2026-01-01T00:00:03"},
]
CLEAN = [
    {"k1": "a", "k2": 1, "total": 8, "cnt": 2, "lo": 3, "hi": 5, "first_s": "x", "last_s": "y"},
    {"k1": "a", "k2": 2, "total": 10, "cnt": 1, "lo": 10, "hi": 10, "first_s": "z", "last_s": "z"},
]


def corrupt(rows, key, **changes):
    return [dict(r, **changes) if (r["k1"], r["k2"]) == key else dict(r) for r in rows]


def test_clean_state_has_no_findings(backend, tmp_path):
    load(backend, EVENTS, CLEAN)
    result, rows = audit(backend, tmp_path)
    assert rows == []
    assert not result.drift_found
    assert result.summary["rows_scanned"] == {"entities": {"ent": 2}, "streams": {"ev": 3}}
    assert result.summary["watermarks"]["ev"]["value"] == [3]


@pytest.mark.parametrize(
    ("column", "wrong", "right"),
    [
        ("total", 9, 8),
        ("cnt", 3, 2),
        ("lo", 4, 3),
        ("hi", 4, 5),
        ("first_s", "y", "x"),
        ("last_s", "x", "y"),
    ],
)
def test_each_fold_reports_exactly_its_corrupted_column(backend, tmp_path, column, wrong, right):
    load(backend, EVENTS, corrupt(CLEAN, A1, **{column: wrong}))
    _, rows = audit(backend, tmp_path)
    assert brief(rows) == {(A1, column, "mismatch", right, wrong)}
    (row,) = rows
    if isinstance(right, int):
        assert row["delta"] == right - wrong
    else:
        assert row["delta"] is None
    assert row["last_event_at"] == "2026-01-01T00:00:02"


def test_null_values_follow_sql_fold_semantics(backend, tmp_path):
    # (a,1): v = 5, NULL; s = 'x', NULL -> sum 5, count 2 rows, min = max = 5, first 'x',
    # last NULL (the last row's value, even when NULL).
    events = [
        {"k1": "a", "k2": 1, "v": 5, "s": "x"},
        {"k1": "a", "k2": 1, "v": None, "s": None},
        {"k1": "a", "k2": 2, "v": None, "s": "z"},
    ]
    rows = [
        {
            "k1": "a",
            "k2": 1,
            "total": 5,
            "cnt": 2,
            "lo": 5,
            "hi": 5,
            "first_s": "x",
            "last_s": None,
        },
        # (a,2): only NULL values: sum 0, min/max NULL; the table has 0 where NULL is expected.
        {
            "k1": "a",
            "k2": 2,
            "total": 0,
            "cnt": 1,
            "lo": 0,
            "hi": None,
            "first_s": "z",
            "last_s": "z",
        },
    ]
    load(backend, events, rows)
    _, found = audit(backend, tmp_path)
    assert brief(found) == {(A2, "lo", "mismatch", None, 0)}


def test_null_against_a_value_is_drift_both_ways(backend, tmp_path):
    load(backend, EVENTS, corrupt(CLEAN, A1, last_s=None, lo=None))
    _, found = audit(backend, tmp_path)
    assert brief(found) == {(A1, "last_s", "mismatch", "y", None), (A1, "lo", "mismatch", 3, None)}


def test_missing_and_orphan_rows(backend, tmp_path):
    rows = [
        CLEAN[0],
        {"k1": "b", "k2": 7, "total": 1, "cnt": 1, "lo": 1, "hi": 1, "first_s": "q", "last_s": "q"},
    ]
    load(backend, EVENTS, rows)
    _, found = audit(backend, tmp_path)
    expected_row = (
        ("cnt", 1),
        ("first_s", "z"),
        ("hi", 10),
        ("last_s", "z"),
        ("lo", 10),
        ("total", 10),
    )
    orphan_row = (("cnt", 1), ("first_s", "q"), ("hi", 1), ("last_s", "q"), ("lo", 1), ("total", 1))
    assert brief(found) == {
        (A2, None, "missing_row", expected_row, "ABSENT"),
        (("b", 7), None, "orphan_row", "ABSENT", orphan_row),
    }


@pytest.mark.scenario("bad data: duplicate keys reported, never picked")
def test_duplicate_keys_are_reported_never_picked(backend, tmp_path):
    # No primary key: (a,1) appears twice (one copy is even correct); (a,2) once, correct.
    rows = [CLEAN[0], corrupt(CLEAN, A1, total=99)[0], CLEAN[1]]
    load(backend, EVENTS, rows, unique=False)
    _, found = audit(backend, tmp_path)
    assert [(r["key"], r["kind"]) for r in found] == [('["a",1]', "duplicate_key")]
    assert '"total":99' in found[0]["actual"] and '"total":8' in found[0]["actual"]
    assert found[0]["extra"] == '{"rows":2}'


def test_a_duplicated_keys_rows_come_in_value_order_whatever_the_table_order(backend, tmp_path):
    """The same duplicated rows, written in either order, give the same finding: the
    rows sorted by their values, NULL last."""
    dups = [
        corrupt(CLEAN, A1, total=99)[0],
        corrupt(CLEAN, A1, total=None)[0],
        CLEAN[0],
        corrupt(CLEAN, A1, total=8, lo=None)[0],
    ]
    ent = load(backend, EVENTS, [*dups, CLEAN[1]], unique=False)
    actual = []
    for order in (dups, dups[::-1]):
        with backend.engine.begin() as conn:
            conn.execute(ent.delete())
            conn.execute(ent.insert(), [*order, CLEAN[1]])
        _, found = audit(backend, tmp_path, name=f"audit{len(actual)}")
        assert [(r["key"], r["kind"]) for r in found] == [('["a",1]', "duplicate_key")]
        actual.append(json.loads(found[0]["actual"]))
    assert actual[0] == actual[1]
    totals = [(row["total"], row["lo"]) for row in actual[0]]
    assert totals == [(8, 3), (8, None), (99, 3), (None, 3)]


def test_composite_keys_do_not_mix(backend, tmp_path):
    # Same k1, different k2; and same k2, different k1.
    events = [*EVENTS, {"k1": "b", "k2": 1, "v": 100, "s": "w"}]
    rows = [
        *CLEAN,
        {
            "k1": "b",
            "k2": 1,
            "total": 100,
            "cnt": 1,
            "lo": 100,
            "hi": 100,
            "first_s": "w",
            "last_s": "w",
        },
    ]
    load(backend, events, corrupt(rows, ("b", 1), total=101))
    _, found = audit(backend, tmp_path)
    assert brief(found) == {(("b", 1), "total", "mismatch", 100, 101)}


TOTAL_WITH = """
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "v"
{extra}
"""


@pytest.mark.parametrize(
    ("extra", "actual", "drift"),
    [
        ("tolerance = 2", 10, False),  # |8 - 10| = 2 is within 2
        ("tolerance = 2", 11, True),
        ("rel_tolerance = 0.25", 10, False),  # 2 <= 0.25 * 10
        ("rel_tolerance = 0.1", 9, True),  # 1 > 0.1 * 9 and > 0.1 * 8
        ("tolerance = 1\nrel_tolerance = 0.1", 9, False),
        ("tolerance = 1", None, True),  # NULL is never within a tolerance
    ],
)
def test_tolerances(backend, tmp_path, extra, actual, drift):
    load(backend, EVENTS, corrupt(CLEAN, A1, total=actual))
    _, found = audit(backend, tmp_path, columns=TOTAL_WITH.format(extra=extra))
    assert bool(found) == drift
    if drift:
        assert brief(found) == {(A1, "total", "mismatch", 8, actual)}


def test_where_filters_contributions_and_initial_starts_the_fold(backend, tmp_path):
    events = [
        {"k1": "a", "k2": 1, "v": 5, "kind": "in", "s": "x"},
        {"k1": "a", "k2": 1, "v": 2, "kind": "void", "s": "y"},
        {"k1": "a", "k2": 2, "v": 7, "kind": "void", "s": "z"},  # explained, contributes nothing
    ]
    columns = """
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "v"
where = "kind <> 'void'"
initial = 100

[entities.ent.columns.last_s]
stream = "ev"
fold = "last"
value = "s"
where = "kind <> 'void'"
initial = "none"
"""
    rows = [
        {"k1": "a", "k2": 1, "total": 105, "last_s": "x"},
        {"k1": "a", "k2": 2, "total": 107, "last_s": "z"},
    ]
    load(backend, events, rows)
    _, found = audit(backend, tmp_path, columns=columns)
    assert brief(found) == {
        (A2, "total", "mismatch", 100, 107),
        (A2, "last_s", "mismatch", "none", "z"),
    }


def test_text_comparison_is_exact(backend, tmp_path):
    # MariaDB's default collation ignores case and trailing spaces; drift must not.
    events = [
        {"k1": "a", "k2": 1, "s": "paid"},
        {"k1": "a", "k2": 2, "s": "paid"},
        {"k1": "a", "k2": 3, "s": "straße"},
        {"k1": "a", "k2": 4, "s": "paid"},
    ]
    rows = [
        {"k1": "a", "k2": 1, "last_s": "Paid"},
        {"k1": "a", "k2": 2, "last_s": "paid "},
        {"k1": "a", "k2": 3, "last_s": "strasse"},
        {"k1": "a", "k2": 4, "last_s": "paid"},
    ]
    load(backend, events, rows)
    columns = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
    _, found = audit(backend, tmp_path, columns=columns)
    assert brief(found) == {
        (("a", 1), "last_s", "mismatch", "paid", "Paid"),
        (("a", 2), "last_s", "mismatch", "paid", "paid "),
        (("a", 3), "last_s", "mismatch", "straße", "strasse"),
    }


def test_ties_in_order_by_are_a_spec_error_for_first_and_last(backend, tmp_path):
    events = [
        {"k1": "a", "k2": 1, "s": "x", "t": "same"},
        {"k1": "a", "k2": 1, "s": "y", "t": "same"},
    ]
    load(backend, events, [{"k1": "a", "k2": 1, "last_s": "y"}])
    columns = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
    spec_columns = columns
    from tests import shop

    text = shop.spec_text(backend.url, spec_columns).replace(
        'order_by = ["id"]', 'order_by = ["t"]'
    )
    from audit import parse_spec, run_audit

    with pytest.raises(SpecError, match=r"streams\.ev\.order_by: rows of key \[\"a\",1\] tie"):
        run_audit(parse_spec(text), out=tmp_path / "a", write_report=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.scenario("bad data: NULL keys reported per table")
def test_null_keys_are_reported_per_table(backend, tmp_path):
    events = [*EVENTS, {"k1": None, "k2": 1, "v": 4}, {"k1": None, "k2": None, "v": 4}]
    load(backend, events, CLEAN)
    _, found = audit(backend, tmp_path)
    assert [(r["kind"], r["key"], r["extra"]) for r in found] == [
        ("null_key", "[null,null]", '{"rows":2,"table":"ev"}')
    ]


def test_only_keys_restricts_the_audit(backend, tmp_path):
    rows = corrupt(corrupt(CLEAN, A1, total=0), A2, total=0)
    load(backend, EVENTS, rows)
    _, found = audit(backend, tmp_path, only_keys={"ent": [A2]})
    assert brief(found) == {(A2, "total", "mismatch", 10, 0)}


def test_columns_from_different_streams(backend, tmp_path):
    """One entity, two streams: a key explained by either stream is not an orphan."""
    import sqlalchemy as sa

    md = sa.MetaData()
    ev2 = sa.Table(
        "ev2",
        md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("a", sa.String(64)),
        sa.Column("b", sa.Integer),
        sa.Column("label", sa.String(64)),
    )
    # (a,1): total from ev = 8, last_s from ev2 = 'new'; (c,9) only in ev2: total rebuilds
    # to 0 (initial); (a,2) only in ev: last_s rebuilds to NULL.
    rows = [
        {"k1": "a", "k2": 1, "total": 8, "last_s": "new"},
        {"k1": "c", "k2": 9, "total": 0, "last_s": "old"},
        {"k1": "a", "k2": 2, "total": 10, "last_s": None},
    ]
    load(backend, EVENTS, rows)
    with backend.engine.begin() as conn:
        ev2.create(conn)
        conn.execute(
            ev2.insert(),
            [
                {"seq": 1, "a": "a", "b": 1, "label": "old"},
                {"seq": 2, "a": "a", "b": 1, "label": "new"},
                {"seq": 3, "a": "c", "b": 9, "label": "new"},
            ],
        )
    columns = """
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "v"

[entities.ent.columns.last_s]
stream = "labels"
fold = "last"
value = "label"
"""
    extra = '\n[streams.labels]\ntable = "ev2"\nkey = ["a", "b"]\norder_by = ["seq"]\n'
    _, found = audit(backend, tmp_path, columns=columns + extra)
    assert brief(found) == {(("c", 9), "last_s", "mismatch", "new", "old")}


@pytest.mark.scenario("bad data: decimals and huge numbers exact")
def test_decimals_and_huge_numbers_are_exact(backend, tmp_path):
    import sqlalchemy as sa

    md = sa.MetaData()
    ent = sa.Table(
        "ent",
        md,
        sa.Column("k1", sa.String(64), primary_key=True),
        sa.Column("k2", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("total", sa.Numeric(38, 4)),
    )
    events = [
        {"k1": "a", "k2": 1, "v": 2**40},
        {"k1": "a", "k2": 1, "v": 2**40},
        {"k1": "a", "k2": 2, "v": 1},
    ]
    rows = [{"k1": "a", "k2": 1, "total": 2**41 + 1}, {"k1": "a", "k2": 2, "total": 1}]
    load(backend, events, rows, table=ent)
    columns = '[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v * 1.0001"\n'
    _, found = audit(backend, tmp_path, columns=columns)
    assert len(found) == 2
    by_key = {r["key"]: r for r in found}
    from decimal import Decimal

    big = by_key['["a",1]']
    exact = Decimal(2**41) * Decimal("1.0001")  # 2199243157877.5552
    if backend.name == "sqlite":  # SQLite has no decimal type: REAL, 15-17 digits
        assert float(big["expected"]) == float(exact)
    else:
        assert Decimal(big["expected"]) == exact
    assert Decimal(big["actual"]) == Decimal(2**41 + 1)
    assert big["delta"] == float(Decimal(big["expected"]) - (2**41 + 1))
    small = by_key['["a",2]']
    assert Decimal(small["expected"]) - Decimal(small["actual"]) == Decimal("0.0001")


#: Unique indexes that do not make a key unique: each lets two rows share (k1, k2).
NOT_EVERY_ROW = {
    "partial": "CREATE UNIQUE INDEX {name} ON {table} ({columns}) WHERE total <> 99",
    "expression": "CREATE UNIQUE INDEX {name} ON {table} ({columns}, (total + 0))",
    # Building it concurrently fails on the duplicates and leaves an invalid index.
    "invalid": "CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns})",
}


def _create_index(backend, kind: str, name: str, table: str, columns: str) -> None:
    sql = NOT_EVERY_ROW[kind].format(name=name, table=table, columns=columns)
    if kind != "invalid":
        backend.execute(sql)
        return
    with backend.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql(sql)
        valid = conn.exec_driver_sql(
            f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{name}'::regclass"
        ).scalar_one()
    assert valid is False  # the index is there, and invalid


@pytest.mark.parametrize(
    ("engine_name", "kind"),
    [
        ("postgresql", "partial"),
        ("postgresql", "expression"),
        ("postgresql", "invalid"),
        ("sqlite", "partial"),
        ("sqlite", "expression"),
    ],
)
def test_a_unique_index_that_does_not_hold_every_row_hides_no_duplicate_key(
    engine_name, kind, tmp_path
):
    """A key counts as unique (and the duplicate check is left out of the diff) only for
    a primary key, a unique constraint or a unique index on plain columns of the key
    that holds every row: not a partial one, one with an expression, or an invalid one
    (a failed CREATE UNIQUE INDEX CONCURRENTLY, which is how duplicates often show)."""
    backend_gen = make_backend(engine_name, tmp_path)
    backend = next(backend_gen)
    try:
        load(backend, EVENTS, [CLEAN[0], corrupt(CLEAN, A1, total=99)[0], CLEAN[1]], unique=False)
        _create_index(backend, kind, "ent_unique", "ent", "k1, k2")
        _, found = audit(backend, tmp_path)
        assert [(r["key"], r["kind"]) for r in found] == [('["a",1]', "duplicate_key")]
    finally:
        next(backend_gen, None)


@pytest.mark.parametrize(
    ("engine_name", "kind"),
    [
        ("postgresql", "partial"),
        ("postgresql", "expression"),
        ("postgresql", "invalid"),
        ("postgresql", None),
        ("sqlite", "partial"),
        ("sqlite", "expression"),
        ("sqlite", None),
    ],
)
def test_only_a_unique_index_on_every_row_makes_order_by_and_key_unique(
    engine_name, kind, tmp_path
):
    """The binding's uniqueness flags (they drop the tie check of first/last folds and
    let a fold pick its row by max(order_by)) for each kind of index; None: a plain
    unique index, which does make them unique."""
    backend_gen = make_backend(engine_name, tmp_path)
    backend = next(backend_gen)
    try:
        backend.execute(
            "CREATE TABLE seq_ev (seq INTEGER NOT NULL, k1 VARCHAR(64) NOT NULL, "
            "v INTEGER, total INTEGER)"
        )
        backend.execute(
            "CREATE TABLE seq_ent (k1 VARCHAR(64) NOT NULL, last_v INTEGER, total INTEGER)"
        )
        if kind == "invalid":  # rows the concurrent build fails on
            backend.execute("INSERT INTO seq_ev VALUES (1, 'a', 1, 1), (1, 'b', 2, 2)")
            backend.execute("INSERT INTO seq_ent VALUES ('a', 1, 1), ('a', 1, 1)")
        if kind is None:
            backend.execute("CREATE UNIQUE INDEX seq_ev_u ON seq_ev (seq)")
            backend.execute("CREATE UNIQUE INDEX seq_ent_u ON seq_ent (k1)")
        else:
            _create_index(backend, kind, "seq_ev_u", "seq_ev", "seq")
            _create_index(backend, kind, "seq_ent_u", "seq_ent", "k1")
        spec = parse_spec(
            f'version = 1\n[database]\nurl = "{backend.url}"\n'
            '[streams.ev]\ntable = "seq_ev"\nkey = ["k1"]\norder_by = ["seq"]\n'
            '[entities.ent]\ntable = "seq_ent"\nkey = ["k1"]\n'
            '[entities.ent.columns.last_v]\nstream = "ev"\nfold = "last"\nvalue = "v"\n'
        )
        with backend.engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("error")  # SQLite's skipped expression index: no warning
            bound = bind_spec(spec, conn)
            conn.rollback()
        unique = kind is None
        assert bound.streams["ev"].order_is_unique is unique
        assert bound.entities["ent"].key_is_unique is unique
    finally:
        next(backend_gen, None)


def test_a_fractional_initial_keeps_exact_decimals_exact(server_backend, tmp_path):
    """TOML reads ``initial = 0.10`` as a float; bound as a double it made the rebuilt
    value of a DECIMAL column floating point: right rows reported (0.10 + 1000000.07 =
    1000000.1699999999) and a 1e-9 drift missed. It is added as the decimal it was written."""
    from decimal import Decimal

    backend = server_backend
    md = sa.MetaData()
    ev = sa.Table(
        "acct_ev",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("acct", sa.Integer, nullable=False),
        sa.Column("amt", sa.Numeric(30, 9), nullable=False),
    )
    acct = sa.Table(
        "acct",
        md,
        sa.Column("acct", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bal", sa.Numeric(30, 9)),  # sum of amt, initial 0.10
        sa.Column("hi", sa.Numeric(30, 9)),  # max of amt, initial 0.0
        sa.Column("scaled", sa.Numeric(30, 9)),  # sum of an expression, initial 0.5
    )
    big = Decimal("1234567890.123456789")
    with backend.engine.begin() as conn:
        md.create_all(conn)
        conn.execute(
            ev.insert(),
            [
                {"id": 1, "acct": 1, "amt": Decimal("0.20")},
                {"id": 2, "acct": 1, "amt": Decimal("1000000.07")},
                {"id": 3, "acct": 2, "amt": big},
            ],
        )
        conn.execute(
            acct.insert(),
            [
                # exactly right
                {"acct": 1, "bal": Decimal("1000000.37"), "hi": Decimal("1000000.07"),
                 "scaled": Decimal("1000000.77")},
                # each 1e-9 off
                {"acct": 2, "bal": big + Decimal("0.1") - Decimal("1e-9"),
                 "hi": big - Decimal("1e-9"), "scaled": big + Decimal("0.5") + Decimal("1e-9")},
            ],
        )  # fmt: skip
    spec = parse_spec(
        f"""
version = 1
[database]
url = "{backend.url}"
[streams.ev]
table = "acct_ev"
key = ["acct"]
order_by = ["id"]
[entities.acct]
table = "acct"
key = ["acct"]
[entities.acct.columns.bal]
stream = "ev"
fold = "sum"
value = "amt"
initial = 0.10
[entities.acct.columns.hi]
stream = "ev"
fold = "max"
value = "amt"
initial = 0.0
[entities.acct.columns.scaled]
stream = "ev"
fold = "sum"
value = "amt * 1"
initial = 0.5
"""
    )
    import pyarrow.parquet as pq

    from audit.run import run_audit

    result = run_audit(spec, out=tmp_path / "a", write_report=False)
    found = pq.read_table(result.findings_path).to_pylist()
    assert {(r["key"], r["column"], r["kind"]) for r in found} == {
        ("[2]", "bal", "mismatch"),
        ("[2]", "hi", "mismatch"),
        ("[2]", "scaled", "mismatch"),
    }
    by_column = {r["column"]: r for r in found}
    assert Decimal(by_column["bal"]["expected"]) == big + Decimal("0.1")
    assert Decimal(by_column["hi"]["expected"]) == big
    assert Decimal(by_column["scaled"]["expected"]) == big + Decimal("0.5")


def test_text_is_exact_under_a_nondeterministic_collation(tmp_path):
    """PostgreSQL compares text under the column's collation: under a case-insensitive ICU
    one (deterministic = false) 'Paid' equalled 'paid' and the drift was missed. Text is
    compared as the same characters, as on the other engines."""
    backend_gen = make_backend("postgresql", tmp_path)
    backend = next(backend_gen)
    try:
        backend.execute(
            "CREATE COLLATION drift_ci (provider = icu, locale = 'und-u-ks-level1', "
            "deterministic = false)"
        )
        md = sa.MetaData()
        ent = sa.Table(
            "ent",
            md,
            sa.Column("k1", sa.String(64), primary_key=True),
            sa.Column("k2", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("last_s", sa.Text(collation="drift_ci")),
        )
        events = [
            {"k1": "a", "k2": 1, "s": "paid"},
            {"k1": "a", "k2": 2, "s": "straße"},
            {"k1": "a", "k2": 3, "s": "paid"},
        ]
        rows = [
            {"k1": "a", "k2": 1, "last_s": "Paid"},  # case
            {"k1": "a", "k2": 2, "last_s": "straße".upper()},  # case, and ß -> SS
            {"k1": "a", "k2": 3, "last_s": "paid"},
        ]
        load(backend, events, rows, table=ent)
        with backend.engine.connect() as conn:
            equal = conn.exec_driver_sql("SELECT count(*) FROM ent WHERE last_s = 'paid'")
            assert equal.scalar_one() == 2  # the collation does ignore case
        columns = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
        _, found = audit(backend, tmp_path, columns=columns)
        assert brief(found) == {
            (("a", 1), "last_s", "mismatch", "paid", "Paid"),
            (("a", 2), "last_s", "mismatch", "straße", "STRASSE"),
        }
    finally:
        next(backend_gen, None)
