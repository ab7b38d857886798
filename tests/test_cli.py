"""The drift command: exit codes, one-line errors, progress, and no secrets in any output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from drift.cli import main
from drift.demo import build_demo
from tests.conftest import MYSQL_URL, POSTGRES_URL, require_server
from tests.shop import load, spec_text

TOTAL = '\n[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v"\n'


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def demo_db(tmp_path):
    return build_demo(tmp_path / "shop")


def test_demo_runs_and_explains(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--dir", str(tmp_path / "d"))
    assert code == 0
    assert "drift: 6 finding(s) in 5 drifted row(s)" in out
    assert "lost update" in out and "Try next:" in out
    assert (tmp_path / "d" / "audit" / "report.html").is_file()
    assert "drift: building the demo shop" in err  # progress goes to stderr
    # Running it again rebuilds the same shop and finds the same drift.
    code2, out2, _ = run(capsys, "demo", "--dir", str(tmp_path / "d"))
    assert (code2, out2) == (0, out)


def test_audit_exit_codes_follow_diff(capsys, sqlite_backend, tmp_path):
    load(sqlite_backend, [{"k1": "a", "k2": 1, "v": 2}], [{"k1": "a", "k2": 1, "total": 2}])
    spec = tmp_path / "drift.toml"
    spec.write_text(spec_text(sqlite_backend.url, TOTAL))
    code, out, _ = run(capsys, "audit", "-c", str(spec), "--out", str(tmp_path / "clean"))
    assert code == 0 and "no drift found" in out
    sqlite_backend.execute("UPDATE ent SET total = 3")
    code, out, err = run(
        capsys, "-q", "audit", "-c", str(spec), "-o", str(tmp_path / "d"), "--format", "json"
    )
    assert code == 1 and err == ""
    summary = json.loads(out)
    assert summary["counts"]["by_kind"] == {"mismatch": 1}
    assert json.loads((tmp_path / "d" / "summary.json").read_text()) == summary


def test_audit_reads_the_url_from_db_option_over_env_over_spec(
    capsys, demo_db, tmp_path, monkeypatch
):
    monkeypatch.setenv("DRIFT_DATABASE_URL", "sqlite:////nonexistent/env.db")
    code, _, err = run(capsys, "audit", "-c", str(demo_db.spec), "-o", str(tmp_path / "a"))
    assert code == 2 and "SQLite database file not found: /nonexistent/env.db" in err
    code, _, _ = run(
        capsys,
        "audit",
        "-c",
        str(demo_db.spec),
        "-o",
        str(tmp_path / "b"),
        "--db",
        f"sqlite:///{demo_db.database}",
    )
    assert code == 1


@pytest.mark.scenario("CLI errors: one line, exit 2, nothing written", engine="sqlite")
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('table = "stock_events"', 'table = "stock_event"'),
            "drift: drift.toml: streams.stock.table: table 'stock_event' not found "
            '(did you mean "stock_events"?)\n',
        ),
        (
            lambda t: t.replace('fold = "sum"', 'fold = "sun"'),
            "drift: drift.toml: entities.inventory.columns.on_hand.fold: unknown fold 'sun' "
            '(did you mean "sum"?); use one of sum, count, min, max, first, last\n',
        ),
        (
            lambda t: t.replace('key = ["sku"]', 'kye = ["sku"]', 1),
            "drift: drift.toml: streams.stock: unknown key 'kye' (did you mean \"key\"?)\n",
        ),
        (
            lambda t: t.replace("sqlite:///shop.db", "sqlite:///nope.db"),
            "drift: SQLite database file not found: {folder}/nope.db\n",
        ),
        (
            lambda t: t.replace("sqlite:///shop.db", "oracle://scott@db/x"),
            "drift: unsupported database 'oracle': drift supports postgresql, mysql/mariadb and "
            "sqlite\n",
        ),
        (
            lambda t: t.replace("sqlite:///shop.db", "not a url"),
            "drift: invalid database URL: not a url\n",
        ),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(capsys, demo_db, tmp_path, edit, message):
    demo_db.spec.write_text(edit(demo_db.spec.read_text()))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(
        capsys, "-q", "audit", "-c", str(demo_db.spec), "-o", str(tmp_path / "out")
    )
    assert code == 2
    assert out == ""
    assert err == message.format(folder=demo_db.folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_existing_output_folder_is_refused(capsys, demo_db, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "audit", "-c", str(demo_db.spec), "-o", str(tmp_path / "out"))
    assert code == 2 and "already exists and is not empty" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.scenario(
    "password in the URL never reaches audit output", engine="postgresql (unreachable)"
)
def test_unreachable_server_and_password_never_shown(capsys, demo_db, tmp_path):
    secret = "Sup3r-S3cret"
    code, out, err = run(
        capsys,
        "audit",
        "-c",
        str(demo_db.spec),
        "-o",
        str(tmp_path / "o"),
        "--db",
        f"postgresql://alice:{secret}@127.0.0.1:1/shop",
    )
    assert code == 2
    assert err.startswith("drift: cannot connect (postgresql+psycopg://alice:***@127.0.0.1:1/shop)")
    assert err.count("\n") == 1 + err.count("drift: reading")  # one error line
    assert secret not in out + err
    assert not (tmp_path / "o").exists()


def test_missing_driver_or_usage_errors(capsys):
    code, out, err = run(capsys, "audit")
    assert code == 2 and "Missing option '--config'" in err
    code, out, _ = run(capsys)
    assert code == 2 and "Commands" in out and "audit" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("drift ")


def test_debug_shows_the_traceback(demo_db, tmp_path):
    with pytest.raises(Exception, match="spec file not found"):
        main(["--debug", "audit", "-c", str(tmp_path / "none.toml")])


def test_report_rerenders_without_a_database(capsys, demo_db, tmp_path):
    code, _, _ = run(capsys, "-q", "audit", "-c", str(demo_db.spec), "-o", str(tmp_path / "a"))
    assert code == 1
    demo_db.database.unlink()
    (tmp_path / "a" / "report.html").unlink()
    code, out, _ = run(capsys, "report", str(tmp_path / "a"))
    assert code == 0 and (tmp_path / "a" / "report.html").is_file()
    code, _, err = run(capsys, "report", str(tmp_path / "nope"))
    assert code == 2 and err == f"drift: audit folder not found: {tmp_path / 'nope'}\n"


def test_console_script_is_installed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "drift", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "drift: 6 finding(s) in 5 drifted row(s)" in proc.stdout


@pytest.mark.scenario("password in the URL never reaches audit output")
@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_passwords_never_reach_any_output_file(capsys, tmp_path, server):
    """A real login with a password: stdout, stderr and every file drift writes are scanned."""
    require_server(server)
    secret = f"pw-{uuid.uuid4().hex[:10]}-S3cret"
    user = f"drift_pw_{uuid.uuid4().hex[:8]}"
    base = make_url(POSTGRES_URL if server == "postgresql" else MYSQL_URL)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if server == "postgresql":
            conn.execute(sa.text(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{secret}'"))
        else:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'"))
            conn.execute(sa.text(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{secret}'"))
            conn.execute(sa.text(f"GRANT ALL ON *.* TO '{user}'@'%'"))
            conn.execute(sa.text(f"GRANT ALL ON *.* TO '{user}'@'localhost'"))
    try:
        from tests.conftest import make_backend

        gen = make_backend(server, tmp_path)
        backend = next(gen)
        try:
            load(backend, [{"k1": "a", "k2": 1, "v": 2}], [{"k1": "a", "k2": 1, "total": 5}])
            url = make_url(backend.url).set(username=user, password=secret)
            url_text = url.render_as_string(hide_password=False)
            spec = tmp_path / "drift.toml"
            spec.write_text(spec_text(url_text, TOTAL))
            code, out, err = run(
                capsys, "audit", "-c", str(spec), "-o", str(tmp_path / "out"), "--db", url_text
            )
            assert code == 1
            code2, out2, err2 = run(
                capsys,
                "audit",
                "-c",
                str(spec),
                "-o",
                str(tmp_path / "o2"),
                "--db",
                url_text.replace(secret, secret + "x"),
            )
            if server == "mysql":  # PostgreSQL trusts local logins, MariaDB checks passwords
                assert code2 == 2 and "Access denied" in err2
            texts = [out, err, out2, err2]
            for path in (tmp_path / "out").rglob("*"):
                if path.is_file():
                    texts.append(path.read_bytes().decode("utf-8", "replace"))
            assert len(texts) >= 6
            assert "***" in (tmp_path / "out" / "summary.json").read_text()
            for text in texts:
                assert secret not in text
        finally:
            next(gen, None)
    finally:
        with admin.connect() as conn:
            if server == "postgresql":
                conn.execute(sa.text(f"DROP ROLE {user}"))
            else:
                conn.execute(sa.text(f"DROP USER '{user}'@'%'"))
                conn.execute(sa.text(f"DROP USER '{user}'@'localhost'"))
        admin.dispose()


@pytest.mark.scenario("read-only audit: the database is unchanged")
def test_audit_never_writes_to_the_database(backend, tmp_path):
    """The audited database is byte-for-byte (SQLite) or row-for-row unchanged."""
    load(backend, [{"k1": "a", "k2": 1, "v": 2}], [{"k1": "a", "k2": 1, "total": 5}])
    before = _dump(backend)
    sqlite_bytes = (
        Path(make_url(backend.url).database).read_bytes() if backend.name == "sqlite" else None
    )
    spec = tmp_path / "drift.toml"
    spec.write_text(spec_text(backend.url, TOTAL))
    assert main(["-q", "audit", "-c", str(spec), "-o", str(tmp_path / "o")]) == 1
    assert _dump(backend) == before
    if sqlite_bytes is not None:
        assert Path(make_url(backend.url).database).read_bytes() == sqlite_bytes


def _dump(backend):
    with backend.engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        return {
            n: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {n}")).all()), key=repr)
            for n in names
        }


def test_the_command_runs_without_pandas(tmp_path):
    """pyarrow would import pandas (0.2 s, 45 MB) just to probe values; the command refuses it."""
    script = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('pandas', sys.modules.get('pandas') is not None))\n"
        f"sys.argv = ['drift', '-q', 'demo', '--dir', {str(tmp_path / 'demo')!r}]\n"
        "runpy.run_module('drift', run_name='__main__')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert out.splitlines()[-1:] == ["pandas False"]
    report = (tmp_path / "demo" / "audit" / "report.html").read_text()
    assert report.count("<svg") >= 3  # the charts were drawn


_EXITING = r"""
import atexit, os, sys, threading, time
from pathlib import Path

real_exit = os._exit

def recorded_exit(code):
    os.write(1, b"os._exit %d\n" % code)
    real_exit(code)

os._exit = recorded_exit  # the way out without the teardown
atexit.register(lambda: print("exit handler ran"))
from drift import cli

if sys.argv[1] == "thread":
    marker, released, exit_now = Path(sys.argv[2]), threading.Event(), cli._exit
    def late():
        released.wait(60)  # still running when the command exits (bounded: no hang on a bug)
        time.sleep(0.2)
        marker.write_text("done")
    def release_then_exit(code):
        released.set()
        exit_now(code)
    threading.Thread(target=late).start()
    cli._exit = release_then_exit
sys.argv = ["drift", "-q", "audit", "-c", sys.argv[3], "--out", sys.argv[4], "-f", "json"]
cli.entry()
"""


@pytest.mark.parametrize("other_thread", [False, True])
def test_the_command_skips_the_interpreter_teardown_only_when_nothing_is_left(
    demo_db, tmp_path, other_thread
):
    """The drift process exits without freeing every module (~0.1 s), after its output is
    flushed and the exit handlers have run; a thread still running gets the usual exit,
    which waits for it."""
    marker = tmp_path / "thread-done"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _EXITING,
            "thread" if other_thread else "alone",
            str(marker),
            str(demo_db.spec),
            str(tmp_path / "audit"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr  # findings
    lines = out.stdout.rstrip("\n").split("\n")
    if other_thread:
        assert lines.pop() == "exit handler ran"  # the usual exit, which waited
        assert marker.read_text() == "done"
    else:
        assert lines[-2:] == ["exit handler ran", "os._exit 1"]
        del lines[-2:]
    summary = json.loads("\n".join(lines))  # the whole JSON document arrived
    rows = [race for race in demo_db.races.values() if not race.startswith("missing outbox")]
    assert summary["counts"]["drifted_rows"] == len(rows)


def test_the_benchmark_still_reads_the_peak_rss_of_a_command_that_skips_the_teardown(
    demo_db, tmp_path
):
    """benchmarks/measure.py reads the peak in an exit handler, which the command still runs
    (a ``finally`` after the module would never be reached)."""
    rss = tmp_path / "rss"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.measure",
            str(rss),
            "drift",
            "-q",
            "audit",
            "-c",
            str(demo_db.spec),
            "--out",
            str(tmp_path / "audit"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 1, out.stderr
    assert 30_000 < int(rss.read_text()) < 1_000_000  # KB: a Python process with pyarrow
