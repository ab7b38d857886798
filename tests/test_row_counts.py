"""rows_scanned: exact counts, except big PostgreSQL tables, which carry the planner's
estimate and are named as estimated (a count(*) of 10M rows costs a second)."""

from __future__ import annotations

import pytest

import audit.run
from audit import parse_spec, run_audit
from drift import demo
from drift.cli import render_summary
from tests.conftest import make_backend


def audit_demo(backend, tmp_path, name):
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))
    return run_audit(spec, out=tmp_path / name)


def exact_counts(backend):
    tables = {"inventory": "inventory", "orders": "orders"}
    streams = {"stock": "stock_events", "order_events": "order_events"}
    return (
        {n: backend.scalar(f"SELECT count(*) FROM {t}") for n, t in tables.items()},
        {n: backend.scalar(f"SELECT count(*) FROM {t}") for n, t in streams.items()},
    )


def test_small_tables_are_counted_exactly(backend, tmp_path):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    rows = audit_demo(backend, tmp_path, "a").summary["rows_scanned"]
    entities, streams = exact_counts(backend)
    assert rows == {"entities": entities, "streams": streams}


@pytest.fixture
def pg(tmp_path):
    yield from make_backend("postgresql", tmp_path)


def test_big_postgresql_tables_carry_the_statistics_estimate(pg, tmp_path, monkeypatch):
    # Only PostgreSQL's estimate is used: MariaDB's is too rough, SQLite keeps none.
    backend = pg
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    entities, streams = exact_counts(backend)
    # The threshold between the two stream tables' sizes: only stock_events (88 rows) is big.
    monkeypatch.setattr(audit.run, "ESTIMATE_FROM", 70)
    # Before ANALYZE PostgreSQL has no estimate (reltuples = -1): everything is counted.
    before = audit_demo(backend, tmp_path, "before").summary["rows_scanned"]
    assert before == {"entities": entities, "streams": streams}
    # Skew the statistics so that an estimate is told apart from a count.
    backend.execute("ANALYZE")
    backend.execute("DELETE FROM stock_events WHERE id > 80")
    result = audit_demo(backend, tmp_path, "after")
    rows = result.summary["rows_scanned"]
    assert rows["estimated"] == {"entities": [], "streams": ["stock"]}
    assert rows["streams"]["stock"] == streams["stock"] == 88  # the estimate, not the 80 left
    assert rows["streams"]["order_events"] == streams["order_events"] < 70  # counted
    assert rows["entities"] == entities
    assert result.summary["watermarks"]["stock"]["rows"] == 88
    html = result.report_path.read_text()
    assert "≈ 88" in html and "PostgreSQL's statistics" in html


def test_the_text_summary_marks_estimated_entity_counts():
    summary = {
        "counts": {"total": 1, "drifted_rows": 1, "by_entity": {"inventory": {"drifted_rows": 1}}},
        "rows_scanned": {
            "entities": {"inventory": 1200000, "orders": 7},
            "streams": {},
            "estimated": {"entities": ["inventory"], "streams": []},
        },
    }
    text = render_summary(summary)
    assert "~1200000" in text and " 7 " in text
