"""Spec sections job_logs and outboxes, JSON references, and their SQL per dialect."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from audit.dialects import get_dialect
from audit.errors import SpecError
from audit.spec import JobLog, JsonRef, Witness, parse_spec

BASE = """
version = 1
[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]
run_id = "job_run_id"
[entities.inventory]
table = "inventory"
key = ["sku"]
[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "qty"
"""

JOB_LOG = """
[job_logs.runs]
table = "job_runs"
entity = "inventory"
key = [{ json = "args", path = "item.sku" }]
name = "job_name"
started_at = "started_at"
finished_at = "finished_at"
"""


def test_job_log_section_parses_with_defaults_and_json_keys():
    spec = parse_spec(BASE + JOB_LOG)
    assert spec.streams["stock"].run_id == "job_run_id"
    assert spec.job_logs["runs"] == JobLog(
        name="runs",
        entity="inventory",
        key=(JsonRef(column="args", path=("item", "sku")),),
        table="job_runs",
        job="job_name",
        started_at="started_at",
        finished_at="finished_at",
    )


def test_also_witnesses_parse():
    spec = parse_spec(
        BASE
        + 'also = [{ stream = "stock", fold = "last", value = { json = "p", path = "n" } },'
        + ' { stream = "stock", fold = "count" }]\n'
    )
    assert spec.entities["inventory"].columns["on_hand"].also == (
        Witness(stream="stock", fold="last", value=JsonRef("p", ("n",))),
        Witness(stream="stock", fold="count"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            JOB_LOG.replace("entity =", "entty ="),
            r"job_logs.runs: unknown key 'entty' \(did you mean",
        ),
        (JOB_LOG.replace('"inventory"', '"inventry"'), r"unknown entity 'inventry' \(did you mean"),
        (JOB_LOG.replace('name = "job_name"\n', ""), r"job_logs.runs.name: missing"),
        (JOB_LOG.replace('path = "item.sku"', 'pth = "x"'), r"key\[0\]: unknown key 'pth'"),
        (
            JOB_LOG.replace('key = [{ json = "args", path = "item.sku" }]', 'key = ["a", "b"]'),
            r"job_logs.runs.key: 2 part\(s\), but entity 'inventory' has a key of 1",
        ),
        (JOB_LOG + 'failed = "x"\nfailed2 = 1\n', r"unknown key 'failed2'"),
        (
            '[job_logs.q]\npreset = "procrastinat"\nentity = "inventory"\nkey = ["a"]\n',
            r"unknown preset 'procrastinat' \(did you mean \"procrastinate\"",
        ),
        (
            '[job_logs.q]\npreset = "oban"\nentity = "inventory"\nkey = ["a"]\ntable = "t"\n',
            r"job_logs.q.table: set by preset = 'oban'; remove it",
        ),
        ("[jobs_logs.q]\n", r"unknown section 'jobs_logs' \(did you mean"),
        (
            '[entities.inventory.columns.on_hand.also]\nstream = "stok"\n'
            'fold = "sum"\nvalue = "x"\n',
            r"also\[0\].stream: unknown stream 'stok'",
        ),
    ],
)
def test_spec_errors_are_one_line_and_name_the_key(text, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_spec(BASE + text)
    assert "\n" not in str(err.value)


def compiled(name: str, dialect) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    table = sa.table("jobs", sa.column("args"))
    expr = get_dialect(name).json_text(table.c.args, ("item", 'we"ird'))
    query = sa.select(expr.label("v")).select_from(table)
    sql = query.compile(dialect=dialect)
    return str(sql), dict(sql.params)


def test_json_text_sql_per_dialect():
    sql, params = compiled("postgresql", postgresql.dialect())
    assert sql == ("SELECT (CAST(jobs.args AS JSON) #>> %(param_1)s::TEXT[]) AS v \nFROM jobs")
    assert params == {"param_1": ["item", 'we"ird']}
    sql, params = compiled("mysql", mysql.dialect())
    assert sql == (
        "SELECT (CASE WHEN JSON_TYPE(JSON_EXTRACT(jobs.args, %s)) = 'NULL' THEN NULL "
        "ELSE JSON_UNQUOTE(JSON_EXTRACT(jobs.args, %s)) END) AS v \nFROM jobs"
    )
    assert list(params.values()) == ['$."item"."we\\"ird"', '$."item"."we\\"ird"']
    sql, params = compiled("sqlite", sqlite.dialect())
    assert sql == "SELECT CAST(json_extract(jobs.args, ?) AS TEXT) AS v \nFROM jobs"
    assert list(params.values()) == ['$."item"."we\\"ird"']


def test_json_text_reads_values_on_every_engine(backend):
    backend.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, args TEXT)")
    rows = {
        1: '{"item": {"sku": "A-1"}}',
        2: '{"item": {"sku": 1004}}',
        3: '{"item": {"sku": null}}',
        4: '{"item": {}}',
        5: '{"item": {"sku": "it\'s \\"q\\" é"}}',
    }
    for i, text in rows.items():
        backend.execute("INSERT INTO jobs (id, args) VALUES (:i, :a)", i=i, a=text)
    table = sa.table("jobs", sa.column("id"), sa.column("args"))
    expr = get_dialect(backend.name).json_text(table.c.args, ("item", "sku"))
    with backend.engine.connect() as conn:
        got = dict(conn.execute(sa.select(table.c.id, expr).order_by(table.c.id)).all())
        # and it filters: key_filter_clause compares the text with text values
        hit = conn.execute(sa.select(table.c.id).where(expr.in_(["1004", "A-1"]))).scalars()
        assert sorted(hit) == [1, 2]
    assert got == {1: "A-1", 2: "1004", 3: None, 4: None, 5: 'it\'s "q" é'}
