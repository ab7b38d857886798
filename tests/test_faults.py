"""Faults during an audit: clear errors (exit 2), nothing half-written, and a retry works."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from audit import parse_spec, run_audit
from audit.errors import AuditFolderError, DatabaseError, DataError, OutputError
from drift import demo
from drift.cli import main
from drift.demo import build_demo
from tests.shop import load, spec_text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.scenario("disk full during an audit: no audit folder, one-line error", engine="sqlite")
def test_disk_full_leaves_no_audit_folder(tmp_path, capsys):
    shop = build_demo(tmp_path / "shop")
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(disk)], check=True)
    else:  # no tiny filesystem without root: fail the first write instead
        pytest.MonkeyPatch().setattr(
            "audit.findings.FindingsWriter._flush",
            lambda self: (_ for _ in ()).throw(OSError(28, "No space left on device")),
        )
    try:
        code = main(["-q", "audit", "-c", str(shop.spec), "--out", str(disk / "audit")])
        _, err = capsys.readouterr()
        assert code == 2
        assert err.startswith("drift: cannot write ") and str(disk / "audit") in err
        assert "No space left on device" in err and err.count("\n") == 1
        assert leftovers(disk) == []  # the staging folder is gone too
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.scenario("unwritable audit output: one-line error, exit 2", engine="sqlite")
def test_output_folder_that_cannot_exist(tmp_path, capsys):
    shop = build_demo(tmp_path / "shop")
    (tmp_path / "afile").write_text("x")
    code = main(["-q", "audit", "-c", str(shop.spec), "--out", str(tmp_path / "afile" / "out")])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("drift: cannot write the audit folder in ")


@pytest.mark.scenario("damaged audit folder: refused with one line", engine="sqlite")
@pytest.mark.parametrize(
    "damage", ["truncate-summary", "drop-findings", "truncate-findings", "foreign-summary"]
)
def test_damaged_audit_folders_are_refused(tmp_path, damage):
    shop = build_demo(tmp_path / "shop")
    result = run_audit(shop.spec, out=tmp_path / "a")
    summary, findings = result.out_dir / "summary.json", result.findings_path
    if damage == "truncate-summary":
        summary.write_bytes(summary.read_bytes()[:40])
    elif damage == "drop-findings":
        findings.unlink()
    elif damage == "truncate-findings":
        findings.write_bytes(findings.read_bytes()[:100])
    else:
        summary.write_text('{"hello": "world"}')
    from audit.report import render_report

    with pytest.raises(AuditFolderError) as info:
        render_report(result.out_dir)
    assert "\n" not in str(info.value)


def _kill_audit_connections(backend, application_name: str) -> int:
    admin = sa.create_engine(
        backend.url.split("?")[0] if backend.name == "postgresql" else backend.url,
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as conn:
            if backend.name == "postgresql":
                return len(
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :n"
                        ),
                        {"n": application_name},
                    ).all()
                )
            ids = (
                conn.execute(
                    sa.text(
                        "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> "
                        "CONNECTION_ID()"
                    ),
                    {"db": backend.schema},
                )
                .scalars()
                .all()
            )
            for i in ids:
                conn.execute(sa.text(f"KILL {int(i)}"))
            return len(ids)
    finally:
        admin.dispose()


@pytest.mark.scenario("connection dropped mid-audit: one-line error, nothing written, retry works")
def test_connection_dropped_mid_audit(server_backend, tmp_path):
    with server_backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    server_backend.engine.dispose()
    name = f"drift-{uuid.uuid4().hex[:8]}"
    url = make_url(server_backend.url)
    if server_backend.name == "postgresql":
        url = url.update_query_dict({"application_name": name})
    url_text = url.render_as_string(hide_password=False)
    spec = parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{url_text}"'))
    killed: list[int] = []

    def progress(message: str) -> None:
        if message.startswith("rebuilding inventory") and not killed:
            # Another session drops the audit's connection, as a failover or a DBA would.
            thread = threading.Thread(
                target=lambda: killed.append(_kill_audit_connections(server_backend, name))
            )
            thread.start()
            thread.join()

    with pytest.raises(DatabaseError) as info:
        run_audit(spec, out=tmp_path / "a", progress=progress, write_report=False)
    assert killed and killed[0] >= 1
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == []
    retry = run_audit(spec, out=tmp_path / "a", write_report=False)
    assert retry.finding_count == 6  # 5 drifted rows and the demo's unannounced event


@pytest.mark.scenario("bad data: text summed as numbers is a data error")
def test_text_summed_as_numbers_is_a_data_error_on_sqlite(sqlite_backend, tmp_path):
    # SQLite would read 'abc' as 0 and report a wrong expected value: refuse instead.
    load(sqlite_backend, [{"k1": "a", "k2": 1, "v": 5}], [{"k1": "a", "k2": 1, "total": 5}])
    sqlite_backend.execute("INSERT INTO ev (id, k1, k2, v) VALUES (99, 'a', 1, 'abc')")
    columns = '[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v"\n'
    with pytest.raises(
        DataError,
        match=r'total\.value: 1 row\(s\) of key \["a",1\] in stream '
        r"'ev' are not numbers",
    ):
        run_audit(parse_spec(spec_text(sqlite_backend.url, columns)), out=tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.scenario("bad data: timestamps with and without time zones")
def test_timestamps_with_and_without_time_zones(server_backend, tmp_path):
    """A last fold over timestamps: exact comparison, ISO text in the findings."""
    md = sa.MetaData()
    tz = server_backend.name == "postgresql"
    from sqlalchemy.dialects import mysql

    ts_type = sa.DateTime(timezone=True) if tz else mysql.DATETIME(fsp=6)
    events = sa.Table(
        "tev",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("k", sa.String(10)),
        sa.Column("at", ts_type),
    )
    state = sa.Table(
        "tstate", md, sa.Column("k", sa.String(10), primary_key=True), sa.Column("seen_at", ts_type)
    )
    import datetime as dt

    stamp = dt.datetime(
        2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)) if tz else None
    )
    with server_backend.engine.begin() as conn:
        md.create_all(conn)
        conn.execute(
            events.insert(), [{"id": 1, "k": "a", "at": stamp}, {"id": 2, "k": "b", "at": stamp}]
        )
        conn.execute(
            state.insert(),
            [{"k": "a", "seen_at": stamp}, {"k": "b", "seen_at": stamp - dt.timedelta(seconds=1)}],
        )
    spec = parse_spec(f"""
version = 1
[database]
url = "{server_backend.url}"
[streams.t]
table = "tev"
key = ["k"]
order_by = ["id"]
[entities.s]
table = "tstate"
key = ["k"]
[entities.s.columns.seen_at]
stream = "t"
fold = "last"
value = "at"
""")
    import pyarrow.parquet as pq

    result = run_audit(spec, out=tmp_path / "a", write_report=False)
    (row,) = pq.read_table(result.findings_path).to_pylist()
    assert row["key"] == '["b"]'
    expected = dt.datetime.fromisoformat(row["expected"].strip('"'))
    actual = dt.datetime.fromisoformat(row["actual"].strip('"'))
    assert expected - actual == dt.timedelta(seconds=1)
    assert expected.microsecond == 123456
    assert (expected.tzinfo is not None) == tz


def test_unwritable_output_error_is_an_output_error(tmp_path):
    shop = build_demo(tmp_path / "shop")
    with pytest.raises(OutputError):
        run_audit(shop.spec, out=Path("/proc/drift-cannot-write/out"))
