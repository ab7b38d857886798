"""What an audit loads before its diffs, and what it loads while the database computes them.

Every ``drift audit`` and ``drift check`` pays for its imports; the ones only
the later steps need (pyarrow, the evidence, plan and report modules, their
templates) load in a thread during the diffs (``audit.run._LaterSteps``).
These tests fail if a change puts them back on the path before the diffs, or
if the thread stops loading what the later steps use.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from audit.schema import bind_spec
from audit.spec import parse_spec
from audit.templating import html_environment
from tests.conftest import make_backend


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.splitlines()[-1])


LATER = [
    "pyarrow",
    "pyarrow.parquet",
    "numpy.ma",
    "jinja2",
    "audit.evidence",
    "audit.export",
    "audit.report",
    "audit.witness",
    "remediate.plan",
    "remediate.target",
]


def test_the_audit_module_does_not_load_what_only_later_steps_need():
    loaded = _fresh(
        "import json, sys\n"
        "import audit.run\n"
        f"print(json.dumps({{m: m in sys.modules for m in {LATER!r}}}))\n"
    )
    assert loaded == {m: False for m in LATER}


def test_the_audit_and_its_later_steps_load_no_server_dialect_or_driver():
    """A SQLite audit does not pay for PostgreSQL's or MariaDB's SQLAlchemy dialect (~0.05 s
    for PostgreSQL's) or driver: connecting loads the one it needs, and the plan's
    script compiler only its own database's (remediate.sql builds it on first use)."""
    others = ["sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql", "psycopg", "pymysql"]
    loaded = _fresh(
        "import json, sys\n"
        "import audit.run, audit.check\n"
        "audit.run._LaterSteps(report=True).wait()\n"
        "from remediate.sql import get_script_dialect\n"
        "get_script_dialect('sqlite').sa_dialect()\n"
        f"print(json.dumps([m for m in {others!r} if m in sys.modules]))\n"
    )
    assert loaded == []


def test_the_preload_thread_loads_the_later_steps_and_their_templates():
    loaded = _fresh(
        "import json, sys\n"
        "import audit.run\n"
        "steps = audit.run._LaterSteps(report=True)\n"
        "steps.wait()\n"
        "from audit.templating import html_environment, sql_environment\n"
        "cached = lambda env: sorted(t.name for t in env.cache.values())\n"
        f"print(json.dumps({{'modules': [m for m in {LATER!r} if m not in sys.modules],\n"
        "    'html': cached(html_environment()), 'sql': cached(sql_environment())}))\n"
    )
    assert loaded["modules"] == []
    assert loaded["sql"] == ["remediation.sql.j2"]
    # Every report template (the page and what it includes) is compiled ahead.
    env = html_environment()
    expected = env.list_templates(
        filter_func=lambda n: n == "report.html.j2" or n.startswith("report/")
    )
    assert "report/evidence.html.j2" in expected
    assert loaded["html"] == sorted(expected)


def test_without_a_report_the_preload_leaves_the_report_alone():
    loaded = _fresh(
        "import json, sys\n"
        "import audit.run\n"
        "steps = audit.run._LaterSteps(report=False)\n"
        "steps.wait()\n"
        "print(json.dumps({'report': 'audit.report' in sys.modules,\n"
        "    'plan': 'remediate.plan' in sys.modules}))\n"
    )
    assert loaded == {"report": False, "plan": True}


def test_a_failing_preload_is_silent_and_the_step_reports_the_error_itself():
    """A module that cannot load: the thread ignores it; the import in the step raises."""
    loaded = _fresh(
        "import json, sys\n"
        "import audit.run\n"
        "sys.modules['remediate.plan'] = None  # any import of it now fails\n"
        "steps = audit.run._LaterSteps(report=True)\n"
        "steps.wait()\n"
        "try:\n"
        "    import remediate.plan\n"
        "    error = None\n"
        "except ImportError as err:\n"
        "    error = type(err).__name__\n"
        "print(json.dumps({'alive': steps.thread.is_alive(), 'error': error}))\n"
    )
    assert loaded == {"alive": False, "error": "ModuleNotFoundError"}


def test_a_command_parses_its_options_without_pydantic(tmp_path):
    """typer 0.29 validates every option through pydantic, ~0.15 s more per command
    (``drift check`` runs every minute); pyproject.toml keeps typer below it. Fails if
    an upgrade or a new option brings pydantic back onto the command's path."""
    spec = tmp_path / "drift.toml"
    spec.write_text(SPEC, encoding="utf-8")
    missing = tmp_path / "missing.db"
    loaded = _fresh(
        "import json, sys\n"
        "from drift.cli import main\n"
        f"code = main(['-q', 'audit', '-c', {str(spec)!r}, '--db', 'sqlite:///{missing}',\n"
        f"             '--out', {str(tmp_path / 'out')!r}, '--jobs', '1', '-f', 'json'])\n"
        "print(json.dumps({'code': code, 'pydantic': 'pydantic' in sys.modules,\n"
        "    'webbrowser': 'webbrowser' in sys.modules}))\n"
    )
    # The audit got as far as the database (its file is missing): options were parsed.
    assert loaded == {"code": 2, "pydantic": False, "webbrowser": False}


# --------------------------------------------------------------------------- reading the schema

SPEC = """
version = 1
[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]
[streams.status]
table = "order_events"
key = ["order_id"]
order_by = ["id"]
[entities.inventory]
table = "inventory"
key = ["sku"]
[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "qty"
[entities.orders]
table = "orders"
key = ["order_id"]
[entities.orders.columns.status]
stream = "status"
fold = "last"
value = "new_status"
"""

TABLES = (
    "CREATE TABLE inventory (sku VARCHAR(20) PRIMARY KEY, on_hand INTEGER NOT NULL)",
    "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, status VARCHAR(20))",
    "CREATE TABLE stock_events (id INTEGER PRIMARY KEY, sku VARCHAR(20) NOT NULL, "
    "qty INTEGER, note VARCHAR(30), CONSTRAINT one_note UNIQUE (sku, note))",
    "CREATE INDEX stock_by_sku ON stock_events (sku, id)",
    "CREATE TABLE order_events (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL "
    "REFERENCES orders (order_id), new_status VARCHAR(20))",
)


def _shape(table: sa.Table) -> dict:
    return {
        "columns": [(c.name, str(c.type), c.nullable) for c in table.columns],
        "primary_key": [c.name for c in table.primary_key.columns],
        "indexes": sorted(
            (i.name, [c.name for c in i.columns], bool(i.unique)) for i in table.indexes
        ),
    }


@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql", "mysql"])
def test_the_spec_tables_read_together_are_the_tables_read_one_by_one(engine_name, tmp_path):
    """bind_spec reads the spec's tables of a schema in one go (fewer catalog queries
    on PostgreSQL); each table must come out as reflecting it alone gives it."""
    backend_gen = make_backend(engine_name, tmp_path)
    backend = next(backend_gen)
    try:
        for statement in TABLES:
            backend.execute(statement)
        spec = parse_spec(SPEC)
        statements: list[str] = []

        def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, PLR0913
            statements.append(statement)

        with backend.engine.connect() as conn:
            sa.event.listen(conn, "before_cursor_execute", count)
            bound = bind_spec(spec, conn)
            sa.event.remove(conn, "before_cursor_execute", count)
            conn.rollback()
            together = [len(statements)]
            statements.clear()
            alone = {}
            sa.event.listen(conn, "before_cursor_execute", count)
            for name in ("stock_events", "order_events", "inventory", "orders"):
                alone[name] = sa.Table(name, sa.MetaData(), autoload_with=conn)
            sa.event.remove(conn, "before_cursor_execute", count)
            conn.rollback()
        tables = {s.table.name: s.table for s in bound.streams.values()}
        tables |= {e.table.name: e.table for e in bound.entities.values()}
        assert {n: _shape(t) for n, t in tables.items()} == {n: _shape(t) for n, t in alone.items()}
        assert bound.streams["stock"].key_is_indexed
        assert bound.streams["stock"].order_is_unique
        if engine_name == "postgresql":
            # Reading alone, the four tables take ~8 catalog queries each.
            assert together[0] < len(statements) / 2
    finally:
        next(backend_gen, None)


def test_a_failed_reading_together_leaves_the_tables_to_be_read_one_by_one(tmp_path, monkeypatch):
    """A statement that fails while the tables are read together aborts a PostgreSQL
    transaction; bind_spec rolls it back and reads each table alone instead."""
    backend_gen = make_backend("postgresql", tmp_path)
    backend = next(backend_gen)
    try:
        for statement in TABLES:
            backend.execute(statement)
        calls = []

        def failing_reflect(self, bind, **kwargs):  # noqa: ANN001, ANN003
            calls.append(kwargs["only"])
            bind.exec_driver_sql("SELECT * FROM no_such_table_here")

        monkeypatch.setattr(sa.MetaData, "reflect", failing_reflect)
        with backend.engine.connect() as conn:
            bound = bind_spec(parse_spec(SPEC), conn)
            conn.rollback()
        assert calls == [["stock_events", "order_events", "inventory", "orders"]]
        assert bound.streams["stock"].key_is_indexed and bound.streams["stock"].order_is_unique
        assert [c.name for c in bound.entities["orders"].table.columns] == ["order_id", "status"]
    finally:
        next(backend_gen, None)
