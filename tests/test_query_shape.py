"""The shape of the diff query per dialect, and that every shape gives the same findings.

The speed work (docs/benchmarks.md) changed how the query is built: FULL OUTER
JOIN on PostgreSQL and SQLite (a UNION of keys on MariaDB), a first/last window
that carries its stream's aggregates, no tie check when order_by is unique, and
the last event time looked up per drifted key when the stream key is indexed.
These tests pin each choice to its condition and check that the findings,
including ``last_event_at``, do not depend on it.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.dialects import get_dialect
from audit.diff import build_diff
from audit.schema import bind_spec
from tests.shop import ALL_COLUMNS, brief, load, spec_text

EVENTS = [
    {"k1": "a", "k2": 1, "v": 5, "s": "x", "t": "2026-01-01T00:00:01"},
    {"k1": "a", "k2": 1, "v": 3, "s": "y", "t": "2026-01-01T00:00:02"},
    {"k1": "a", "k2": 2, "v": 10, "s": "z", "t": "2026-01-01T00:00:03"},
    {"k1": "b", "k2": 1, "v": 1, "s": "w", "t": "2026-01-01T00:00:04"},
]
# a1 drifted (total), a2 clean, b1 missing, c1 orphan.
ROWS = [
    {"k1": "a", "k2": 1, "total": 7, "cnt": 2, "lo": 3, "hi": 5, "first_s": "x", "last_s": "y"},
    {"k1": "a", "k2": 2, "total": 10, "cnt": 1, "lo": 10, "hi": 10, "first_s": "z", "last_s": "z"},
    {
        "k1": "c",
        "k2": 1,
        "total": 0,
        "cnt": 0,
        "lo": None,
        "hi": None,
        "first_s": None,
        "last_s": None,
    },
]
LAST = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
LAST_WHERE = LAST + "where = \"s <> 'q'\"\n"


def compiled(backend, columns: str, order_by: str = "id") -> str:
    text = spec_text(backend.url, columns).replace(
        'order_by = ["id"]', f'order_by = ["{order_by}"]'
    )
    spec = parse_spec(text)
    with backend.engine.connect() as conn:
        bound = bind_spec(spec, conn)
    diff = build_diff(bound, bound.entities["ent"], get_dialect(backend.engine.dialect.name))
    return str(diff.select.compile(backend.engine)).upper()


def findings(backend, tmp_path, name):
    spec = parse_spec(spec_text(backend.url, ALL_COLUMNS))
    result = run_audit(spec, out=tmp_path / name, write_report=False)
    rows = pq.read_table(result.findings_path).to_pylist()
    return brief(rows), sorted((r["key"], r["column"] or "", r["last_event_at"]) for r in rows)


def test_full_outer_join_where_the_engine_has_it(backend):
    load(backend, EVENTS, ROWS)
    sql = compiled(backend, ALL_COLUMNS)
    if backend.name == "mysql":
        assert "UNION" in sql and "FULL OUTER JOIN" not in sql
    else:
        assert "FULL OUTER JOIN" in sql and "UNION" not in sql
        # Each stream is read once: the window carries the aggregates, no GROUP BY.
        assert "GROUP BY" not in sql


def test_a_filtered_window_keeps_its_own_group_by(backend):
    load(backend, EVENTS, ROWS)
    sql = compiled(backend, LAST_WHERE)
    # Each aggregate and window is named once: MariaDB's UNION takes the stream's keys
    # from its table, not from the aggregate (which it would compute a second time).
    if backend.name == "mysql":
        # MariaDB picks the last row by max(id) per key (a second GROUP BY, no window).
        assert sql.count("GROUP BY") == 2
        assert "ROW_NUMBER()" not in sql
        assert "SELECT EV.K1 AS K0, EV.K2 AS K1 \nFROM EV UNION" in sql
    else:
        assert sql.count("GROUP BY") == 1
        assert sql.count("ROW_NUMBER()") == 1


def test_tie_check_only_when_order_by_is_not_unique(backend):
    load(backend, EVENTS, ROWS)
    assert "LEAD(" not in compiled(backend, LAST, order_by="id")
    assert "LEAD(" in compiled(backend, LAST, order_by="t")


def test_last_event_time_is_looked_up_only_with_an_index(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    assert "MAX(TQ0.T)" not in compiled(backend, LAST)
    without_index = findings(backend, tmp_path, "no-index")
    with backend.engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ev_key ON ev (k1)"))
    sql = compiled(backend, LAST)
    # The index leads with k1 only, not the whole key: still aggregated.
    assert "MAX(TQ0.T)" not in sql
    with backend.engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ev_key2 ON ev (k1, k2, id)"))
    assert "MAX(TQ0.T)" in compiled(backend, LAST)
    with_index = findings(backend, tmp_path, "index")
    assert with_index == without_index
    b1 = (("cnt", 1), ("first_s", "w"), ("hi", 1), ("last_s", "w"), ("lo", 1), ("total", 1))
    c1 = (
        ("cnt", 0),
        ("first_s", None),
        ("hi", None),
        ("last_s", None),
        ("lo", None),
        ("total", 0),
    )
    assert without_index[0] == {
        (("a", 1), "total", "mismatch", 8, 7),
        (("b", 1), None, "missing_row", b1, "ABSENT"),
        (("c", 1), None, "orphan_row", "ABSENT", c1),
    }
    times = {(key, column): at for key, column, at in without_index[1]}
    assert times[('["a",1]', "total")] == "2026-01-01T00:00:02"
    assert times[('["b",1]', "")] == "2026-01-01T00:00:04"
    assert times[('["c",1]', "")] is None


def test_whole_table_settings_only_around_a_full_diff(backend, tmp_path, monkeypatch):
    """PostgreSQL: no plain index scans while a full diff runs, MariaDB: no merged derived
    tables; an incremental diff keeps the defaults, but for PostgreSQL's price of a
    random read."""
    import audit.diff

    load(backend, EVENTS, ROWS)
    spec = parse_spec(spec_text(backend.url, ALL_COLUMNS))
    seen: list[str] = []
    real = audit.diff._set

    def spy(conn, statement):  # type: ignore[no-untyped-def]
        seen.append(statement)
        real(conn, statement)

    monkeypatch.setattr(audit.diff, "_set", spy)
    full = run_audit(spec, out=tmp_path / "full", write_report=False, since_last=tmp_path / "s")
    settings = list(seen)
    seen.clear()
    inc = run_audit(spec, out=tmp_path / "inc", write_report=False, since_last=tmp_path / "s")
    assert (full.summary["scope"], inc.summary["scope"]) == ("full", "incremental")
    if backend.name == "postgresql":
        lower = (
            "SELECT set_config('drift.random_page_cost', current_setting('random_page_cost'), "
            "true), set_config('random_page_cost', least(current_setting('random_page_cost')"
            "::float8, 1.1)::text, true)"
        )
        restore = (
            "SELECT set_config('random_page_cost', current_setting('drift.random_page_cost'), true)"
        )
        assert seen == [lower, restore]
    else:
        assert seen == []
    if backend.name == "postgresql":
        assert settings == [
            "SET LOCAL enable_indexscan = off",
            "SET LOCAL enable_indexonlyscan = off",
            "SET LOCAL enable_indexscan TO DEFAULT",
            "SET LOCAL enable_indexonlyscan TO DEFAULT",
        ]
    elif backend.name == "mysql":
        # MariaDB: derived tables materialized (a merged first/last window filters late)
        # and kept in memory up to 256 MB; each setting restored after.
        size = 256 * 1024 * 1024
        assert settings == [
            "SET @drift_optimizer_switch = @@SESSION.optimizer_switch",
            "SET @drift_tmp_table_size = @@SESSION.tmp_table_size",
            "SET @drift_max_heap_table_size = @@SESSION.max_heap_table_size",
            "SET SESSION optimizer_switch = 'derived_merge=off'",
            f"SET SESSION max_heap_table_size = GREATEST(@@SESSION.max_heap_table_size, {size})",
            f"SET SESSION tmp_table_size = GREATEST(@@SESSION.tmp_table_size, {size})",
            "SET SESSION optimizer_switch = @drift_optimizer_switch",
            "SET SESSION tmp_table_size = @drift_tmp_table_size",
            "SET SESSION max_heap_table_size = @drift_max_heap_table_size",
        ]
    else:
        assert settings == []


def test_a_restricted_diff_reads_only_those_current_rows_where_the_planner_needs_it(
    backend, tmp_path
):
    """PostgreSQL cannot push a filter on the joined key into one side of a FULL JOIN: a
    restricted diff (incremental, verify) filters the entity table in a subquery. SQLite
    joins the table whole (it would scan such a subquery once per row)."""
    load(backend, EVENTS, ROWS)
    spec = parse_spec(spec_text(backend.url, ALL_COLUMNS))
    with backend.engine.connect() as conn:
        bound = bind_spec(spec, conn)
    dialect = get_dialect(backend.engine.dialect.name)
    keys = [("a", 1), ("c", 1)]
    diff = build_diff(bound, bound.entities["ent"], dialect, keys)
    sql = " ".join(str(diff.select.compile(backend.engine)).upper().split())
    filtered_current = "FROM ENT WHERE (ENT.K1, ENT.K2) IN" in sql
    assert filtered_current == (backend.name in ("postgresql", "mysql"))
    # Whatever the shape, the restricted audit reports exactly the full audit's findings
    # for those keys.
    full = findings(backend, tmp_path, "full")[0]
    result = run_audit(spec, out=tmp_path / "keys", write_report=False, only_keys={"ent": keys})
    restricted = brief(pq.read_table(result.findings_path).to_pylist())
    assert {f[0] for f in full} == {("a", 1), ("b", 1), ("c", 1)}
    assert restricted == {f for f in full if f[0] in keys}


def test_key_lists_travel_as_one_array_on_postgresql(backend):
    """verify and evidence filter thousands of keys: on PostgreSQL one typed array
    parameter (``= ANY``), elsewhere ``IN``; the rows found are the same."""
    from decimal import Decimal

    from audit.rebuild import key_filter_clause

    meta = sa.MetaData()
    table = sa.Table(
        "keys_t",
        meta,
        sa.Column("s", sa.String(40)),
        sa.Column("i", sa.BigInteger),
        sa.Column("n", sa.Numeric(12, 2)),
    )
    hostile = ["a", "b'c", 'd"e', "f\\g", "h,i", "{j}", "NULL", "é😀", " k "]
    rows = [{"s": s, "i": n, "n": Decimal(n) / 4} for n, s in enumerate(hostile)]
    with backend.engine.begin() as conn:
        meta.create_all(conn)
        conn.execute(table.insert(), rows)

    def found(column, values):
        clause = key_filter_clause([column], [(v,) for v in values])
        sql = str(sa.select(table.c.i).where(clause).compile(backend.engine))
        with backend.engine.connect() as conn:
            hits = sorted(conn.execute(sa.select(table.c.i).where(clause)).scalars())
        return sql, hits

    wanted = hostile[1:6] + ["not there"]
    sql, hits = found(table.c.s, wanted)
    assert hits == [1, 2, 3, 4, 5]
    assert ("= ANY" in sql) == (backend.name == "postgresql")
    sql, hits = found(table.c.i, [0, 8, 99])
    assert hits == [0, 8]
    assert ("= ANY" in sql) == (backend.name == "postgresql")
    # Mixed Python types (psycopg would refuse the array) and other column types: IN.
    sql, hits = found(table.c.n, [Decimal("0.25"), 2])
    assert hits == [1, 8] and "= ANY" not in sql
    if backend.name == "postgresql":  # (sqlite3 cannot bind a Decimal at all)
        sql, hits = found(table.c.i, [1, Decimal(2)])
        assert hits == [1, 2] and "= ANY" not in sql


def test_a_key_list_is_a_plain_condition_an_index_can_serve(backend):
    """Without native booleans (SQLite, MariaDB) SQLAlchemy would write a custom boolean
    element as ``(k IN (...)) = 1``, which no index serves: SQLite then scanned a whole
    stream table for each evidence batch (10x slower at 1M stream rows)."""
    from audit.rebuild import key_filter_clause

    meta = sa.MetaData()
    table = sa.Table(
        "keyed_t",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("k", sa.String(20), index=True),
        sa.Column("v", sa.Integer),
    )
    with backend.engine.begin() as conn:
        meta.create_all(conn)
        rows = [{"id": i, "k": f"k{i % 500}", "v": i} for i in range(1, 5001)]
        conn.execute(table.insert(), rows)
        if backend.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
    clause = key_filter_clause([table.c.k], [("k1",), ("k7",)])
    ranked = sa.func.row_number().over(partition_by=table.c.k, order_by=table.c.id.desc())
    inner = sa.select(table, ranked.label("pos")).where(clause).subquery()
    query = sa.select(inner).where(inner.c.pos <= 3).order_by(inner.c.k, inner.c.pos)
    sql = " ".join(str(query.compile(backend.engine)).split())
    assert "= 1" not in sql
    with backend.engine.connect() as conn:
        rows = conn.execute(query).all()
        if backend.name == "sqlite":
            compiled = query.compile(backend.engine, compile_kwargs={"render_postcompile": True})
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
            assert any("SEARCH keyed_t USING INDEX" in str(step) for step in plan), plan
    assert [(r.k, r.id) for r in rows] == [
        ("k1", 4501),
        ("k1", 4001),
        ("k1", 3501),
        ("k7", 4507),
        ("k7", 4007),
        ("k7", 3507),
    ]


def test_postgres_prices_random_reads_lower_during_a_restricted_diff_and_no_longer(tmp_path):
    """random_page_cost is lowered to 1.1 for the diff (a lower setting is kept) and put
    back as it was, within the audit's transaction."""
    from audit.dialects import SOME_KEYS_RANDOM_PAGE_COST, PostgresDialect
    from tests.conftest import make_backend

    backend_gen = make_backend("postgresql", tmp_path)
    backend = next(backend_gen)
    before, after = PostgresDialect().some_keys_settings()
    query = "SELECT current_setting('random_page_cost')::float8"
    try:
        with backend.engine.connect() as conn:
            for default in (4.0, 2.0, 1.0, 0.5):
                conn.exec_driver_sql(f"SET random_page_cost = {default}")
                conn.commit()
                with conn.begin():
                    for statement in before:
                        conn.exec_driver_sql(statement)
                    during = conn.exec_driver_sql(query).scalar_one()
                    for statement in after:
                        conn.exec_driver_sql(statement)
                    assert conn.exec_driver_sql(query).scalar_one() == default
                assert during == min(default, SOME_KEYS_RANDOM_PAGE_COST)
                assert conn.exec_driver_sql(query).scalar_one() == default
    finally:
        next(backend_gen, None)


def test_mariadb_temporary_tables_stay_in_memory_during_a_full_diff_and_no_longer(tmp_path):
    """The session's temporary-table limits are raised for the diff (never lowered) and
    put back as they were."""
    from audit.dialects import TEMP_TABLE_BYTES, MySQLDialect
    from tests.conftest import make_backend

    backend_gen = make_backend("mysql", tmp_path)
    backend = next(backend_gen)
    before, after = MySQLDialect().whole_table_settings()
    query = (
        "SELECT @@SESSION.tmp_table_size, @@SESSION.max_heap_table_size, @@SESSION.optimizer_switch"
    )
    try:
        with backend.engine.connect() as conn:
            for start in (16 * 1024 * 1024, 2 * TEMP_TABLE_BYTES):
                conn.exec_driver_sql(f"SET SESSION tmp_table_size = {start}")
                conn.exec_driver_sql(f"SET SESSION max_heap_table_size = {start}")
                original = conn.exec_driver_sql(query).one()
                for statement in before:
                    conn.exec_driver_sql(statement)
                during = conn.exec_driver_sql(query).one()
                for statement in after:
                    conn.exec_driver_sql(statement)
                assert tuple(during[:2]) == (max(start, TEMP_TABLE_BYTES),) * 2
                assert "derived_merge=off" in during[2]
                assert tuple(conn.exec_driver_sql(query).one()) == tuple(original)
    finally:
        next(backend_gen, None)


def test_mariadb_picks_the_rows_a_window_would(tmp_path, monkeypatch):
    """With one unique NOT NULL order_by column MariaDB picks first/last rows by joining
    back max/min(id) per key instead of materializing a ROW_NUMBER() window; the
    findings, with every fold and a filtered last, are exactly the window's."""
    from audit.dialects import MySQLDialect
    from tests.conftest import make_backend
    from tests.shop import audit as shop_audit

    backend_gen = make_backend("mysql", tmp_path)
    backend = next(backend_gen)
    try:
        events = [*EVENTS, {"k1": "b", "k2": 1, "v": 2, "s": "q", "t": "2026-01-01T00:00:05"}]
        load(backend, events, ROWS)
        first_where = LAST.replace("last_s", "first_s").replace('"last"', '"first"')
        first_where += "where = \"s <> 'w'\"\n"
        # A SQL expression naming stream columns that share names with the query's own
        # labels (k1, t) must still mean the stream's columns.
        expression = LAST.replace('value = "s"', "value = \"CONCAT(k1, '/', s, t IS NULL)\"")
        for n, columns in enumerate((ALL_COLUMNS, LAST_WHERE, first_where, expression)):
            assert "ROW_NUMBER()" not in compiled(backend, columns)
            assert "ROW_NUMBER()" in compiled(backend, columns, order_by="t")
            _, picked = shop_audit(backend, tmp_path, columns, name=f"picked{n}")
            with monkeypatch.context() as patch:
                patch.setattr(MySQLDialect, "picks_first_last", False)
                assert "ROW_NUMBER()" in compiled(backend, columns)
                _, windowed = shop_audit(backend, tmp_path, columns, name=f"window{n}")
            assert picked and brief(picked) == brief(windowed)
            last_times = sorted((r["key"], r["last_event_at"] or "") for r in picked)
            assert last_times == sorted((r["key"], r["last_event_at"] or "") for r in windowed)
    finally:
        next(backend_gen, None)
