"""`--jobs`: entities diffed in parallel read the audit's one snapshot, give the same folder,
and a failure in one stops the others.

PostgreSQL shares the snapshot (pg_export_snapshot); MariaDB and SQLite diff one
entity at a time and say so.
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import audit.run
from audit import parse_spec, run_audit
from audit.errors import DatabaseError
from drift import demo
from drift.cli import main
from tests.conftest import make_backend


@pytest.fixture
def pg(tmp_path):
    yield from make_backend("postgresql", tmp_path)


def demo_spec(backend):
    return parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))


def build(backend):
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)


def rows(result):
    return pq.read_table(result.findings_path).to_pylist()


def test_parallel_audit_writes_the_same_findings(backend, tmp_path):
    build(backend)
    spec = demo_spec(backend)
    said: list[str] = []
    one = run_audit(spec, out=tmp_path / "one", write_report=False)
    two = run_audit(spec, out=tmp_path / "two", write_report=False, jobs=2, progress=said.append)
    assert len(rows(one)) == 6
    assert rows(two) == rows(one)  # same findings, same order
    assert two.summary["counts"] == one.summary["counts"]
    assert set(two.summary["timings"]) == set(one.summary["timings"])
    sequential_note = [m for m in said if "cannot share a snapshot" in m]
    if backend.name == "postgresql":
        assert sequential_note == []
    else:
        assert sequential_note == [
            f"--jobs 2: {backend.name} cannot share a snapshot between connections; "
            "diffing one entity at a time"
        ]


@pytest.mark.scenario("--jobs 2: writes committed during the audit are invisible to every worker")
def test_joined_connections_read_the_audit_snapshot(pg, tmp_path):
    backend = pg
    build(backend)
    spec = demo_spec(backend)
    before = run_audit(spec, out=tmp_path / "before", write_report=False)
    wrote = []

    def write_after_snapshot(message: str) -> None:
        # Said once the snapshot is open and before any entity is diffed: new
        # drift on both entities, committed by another connection.
        if message == "reading stream watermarks" and not wrote:
            backend.execute("UPDATE inventory SET on_hand = on_hand + 1000")
            backend.execute("UPDATE orders SET status = 'tampered'")
            wrote.append(True)

    during = run_audit(
        spec,
        out=tmp_path / "during",
        write_report=False,
        jobs=2,
        progress=write_after_snapshot,
    )
    assert wrote
    assert rows(during) == rows(before)
    # The writes were real: an audit after them sees every row drifted.
    after = run_audit(spec, out=tmp_path / "after", write_report=False, jobs=2)
    n_rows = backend.scalar("SELECT count(*) FROM inventory") + backend.scalar(
        "SELECT count(*) FROM orders"
    )
    assert after.summary["counts"]["drifted_rows"] >= n_rows


@pytest.mark.scenario("--jobs 2: one entity fails, the other's running query is cancelled")
def test_a_failing_entity_cancels_the_others(pg, tmp_path, monkeypatch):
    backend = pg
    build(backend)
    spec = demo_spec(backend)
    real_run_diff = audit.run.run_diff
    sleep_ended: list[BaseException | None] = []

    def run_diff(conn, bound, diff, dialect=None):
        if diff.entity.spec.name == "orders":
            # A long statement on this worker's connection, where the diff would run.
            try:
                conn.exec_driver_sql("SELECT pg_sleep(120)")
                sleep_ended.append(None)
            except BaseException as err:
                sleep_ended.append(err)
                raise
            return real_run_diff(conn, bound, diff, dialect)
        # inventory fails once the orders worker's statement is running.
        while not backend.scalar(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state = 'active' AND query = 'SELECT pg_sleep(120)'"
        ):
            time.sleep(0.05)
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(audit.run, "run_diff", run_diff)
    with pytest.raises(DatabaseError, match="server closed the connection"):
        run_audit(spec, out=tmp_path / "a", write_report=False, jobs=2)
    # The sleeping statement was cancelled by the server, not waited for.
    assert len(sleep_ended) == 1
    assert isinstance(sleep_ended[0], sa.exc.OperationalError)
    assert "canceling statement due to user request" in str(sleep_ended[0])
    assert not (tmp_path / "a").exists()


def test_jobs_on_the_command_line(tmp_path, capsys):
    shop = demo.build_demo(tmp_path / "shop")
    code = main(["audit", "-c", str(shop.spec), "--out", str(tmp_path / "a"), "--jobs", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--jobs 2: sqlite cannot share a snapshot between connections" in err
    assert main(["-q", "audit", "-c", str(shop.spec), "--out", str(tmp_path / "b"), "-j", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
