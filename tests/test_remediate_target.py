"""The target check tells servers apart: a plan audited on one server is refused on another
whose database has the same name and schema (staging and production)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import remediate.target
from drift import demo
from drift.cli import main
from drift.testing import scratch_database
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, write_plan
from remediate.target import server_identity
from tests.conftest import REQUIRE_SERVERS, Backend, make_backend
from tests.remediation_helpers import audited_shop, run_client, table_state

TABLES = ("inventory", "orders", "drift_remediation_log")
OVERRIDE = "; pass --target-override REASON to apply anyway\n"


def _identity(url: str) -> tuple[str | None, str | None]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            found = server_identity(conn)
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1  # the transaction still works
            return found
    finally:
        engine.dispose()


def _replan(audit: Path, **fingerprint: object) -> None:
    """Plan again as if the audit had recorded ``fingerprint`` (None removes a key)."""
    path = audit / "target.json"
    target = json.loads(path.read_text())
    for key, value in fingerprint.items():
        if value is None:
            target["fingerprint"].pop(key, None)
        else:
            target["fingerprint"][key] = value
    path.write_text(json.dumps(target))
    write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))


def _refused(backend, capsys, audit: Path, *args: str) -> str:
    before = table_state(backend, *TABLES)
    capsys.readouterr()
    assert main(["apply", str(audit), "--db", backend.url, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drift: refused: ") and err.count("\n") == 1, err
    assert table_state(backend, *TABLES) == before
    return err


def test_a_database_file_replaced_at_the_audited_path_is_refused(sqlite_backend, tmp_path, capsys):
    """Same path, same schema, another file (another machine's shop.db at the same path, a
    restored copy): before, only the path was compared."""
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    path = Path(make_url(backend.url).database or "")
    audited = server_identity_of(backend.url)
    os.replace(path, tmp_path / "audited.db")
    shutil.copyfile(tmp_path / "audited.db", path)  # a new file: another inode
    backend.engine.dispose()  # its pooled connections still have the audited file open
    live = server_identity_of(backend.url)
    assert live != audited
    assert _refused(backend, capsys, audit) == (
        f"drift: refused: the target is not the audited server (audited {audited}, "
        f"this is {live})" + OVERRIDE
    )
    assert main(["apply", str(audit), "--db", backend.url, "--target-override", "restored"]) == 0
    assert backend.scalar("SELECT target_override FROM drift_remediation_log") == "restored"


def server_identity_of(url: str) -> str:
    found, note = _identity(url)
    assert found is not None, note
    return found


def test_the_audited_file_reached_through_a_symlink_is_the_same_server(sqlite_backend, tmp_path):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    alias = tmp_path / "alias"
    alias.mkdir()
    (alias / "shop.db").symlink_to(make_url(backend.url).database or "")
    assert main(["-q", "apply", str(audit), "--db", f"sqlite:///{alias / 'shop.db'}"]) == 0


def test_the_server_identity_is_the_same_whatever_address_reaches_it(server_backend):
    """Host name, IP address or Unix socket: the server's own identity, not the address."""
    url = make_url(server_backend.url)
    urls = [url, url.set(host="localhost")]
    socket = "/var/run/postgresql" if server_backend.name == "postgresql" else None
    if server_backend.name == "postgresql" and Path(socket or "").is_dir():
        urls.append(url.set(host=None).update_query_dict({"host": socket}))
    if server_backend.name == "mysql" and Path("/run/mysqld/mysqld.sock").exists():
        urls.append(url.update_query_dict({"unix_socket": "/run/mysqld/mysqld.sock"}))
    found = {server_identity_of(u.render_as_string(hide_password=False)) for u in urls}
    assert len(found) == 1
    (identity,) = found
    if server_backend.name == "postgresql":
        system = server_backend.scalar("SELECT system_identifier FROM pg_control_system()")
        assert identity == f"postgresql system {system}"
    else:
        hostname = server_backend.scalar("SELECT @@hostname")
        uid = server_backend.scalar("SELECT @@server_uid")
        port = server_backend.scalar("SELECT @@port")
        assert identity == f"mariadb {hostname}:{port} server_uid {uid}"


def test_a_postgresql_role_without_superuser_reads_the_identity(tmp_path):
    from tests.conftest import POSTGRES_URL, require_server

    require_server("postgresql")
    role = f"drift_role_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        try:
            as_role = make_url(POSTGRES_URL).set(username=role)
            assert _identity(as_role.render_as_string(hide_password=False)) == _identity(
                POSTGRES_URL
            )
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
    finally:
        admin.dispose()


def test_a_plan_audited_on_another_server_is_refused(backend, tmp_path, capsys):
    """Another server with the same database name and schema (a staging server whose plan is
    applied to production): passed the target check before, and the fix landed there."""
    audit = audited_shop(backend, tmp_path)
    live = server_identity_of(backend.url)
    other = live.replace(live.split()[-1], "9" * len(live.split()[-1]))
    _replan(audit, server=other)
    approve(audit, "alice")
    assert _refused(backend, capsys, audit) == (
        f"drift: refused: the target is not the audited server (audited {other}, "
        f"this is {live})" + OVERRIDE
    )
    assert main(["-q", "apply", str(audit), "--db", backend.url, "--target-override", "x"]) == 0


@pytest.mark.parametrize("case", ["live unreadable", "audit unreadable", "older plan"])
def test_a_server_identity_that_cannot_be_read_is_refused_saying_why(
    sqlite_backend, tmp_path, capsys, monkeypatch, case
):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    denied = "role app may not call pg_control_system()"
    if case == "live unreadable":
        monkeypatch.setattr(remediate.target, "server_identity", lambda _conn: (None, denied))
        why = f"this server's identity is unreadable: {denied}"
    elif case == "audit unreadable":
        target = json.loads((audit / "target.json").read_text())
        target["fingerprint"] |= {"server": None, "server_note": denied}
        (audit / "target.json").write_text(json.dumps(target))
        write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
        why = f"the audit could not read the server's identity: {denied}"
    else:
        _replan(audit, server=None)  # a target.json written before the server was recorded
        why = "the plan was made by an older drift, which did not record it; audit again"
    approve(audit, "alice")
    assert _refused(backend, capsys, audit) == (
        f"drift: refused: cannot tell whether the target is the audited server ({why})" + OVERRIDE
    )
    assert main(["-q", "apply", str(audit), "--db", backend.url, "--target-override", "x"]) == 0


def test_the_audit_records_the_server_identity(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    target = json.loads((audit / "target.json").read_text())
    plan = json.loads((audit / "plan" / "plan.json").read_text())
    assert target["fingerprint"]["server"] == server_identity_of(backend.url)
    assert "server_note" not in target["fingerprint"]
    assert plan["fingerprint"] == target["fingerprint"]


def _postgres_bin() -> Path | None:
    """The folder of the local PostgreSQL's initdb and pg_ctl (Debian keeps them off PATH)."""
    found = shutil.which("pg_config")
    if found:
        folder = Path(
            subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()
        )
        if (folder / "initdb").exists():
            return folder
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@pytest.fixture
def second_postgres() -> Iterator[str]:
    """A second PostgreSQL cluster of its own (initdb, on a free port, trust auth), stopped
    and removed afterwards; ``DRIFT_TEST_SECOND_POSTGRES_URL`` names one instead."""
    given = os.environ.get("DRIFT_TEST_SECOND_POSTGRES_URL")
    if given:
        yield given
        return
    folder = _postgres_bin()
    if folder is None:
        problem = "no initdb/pg_ctl to start a second PostgreSQL cluster"
        if REQUIRE_SERVERS:
            pytest.fail(f"DRIFT_REQUIRE_SERVERS=1 but {problem}")
        pytest.skip(problem)
    # initdb refuses to run as root: the cluster then belongs to the postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="drift-second-pg-"))
    if as_user:
        shutil.chown(home, "postgres")
    data = home / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=60)
    try:
        run(
            [
                *as_user,
                str(folder / "initdb"),
                "-N",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                str(data),
            ]
        )
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [*as_user, str(folder / "pg_ctl"), "-D", str(data)]
        try:
            # The server's output goes to a log file: inherited pipes would never close.
            run([*pg_ctl, "-o", options, "-l", str(home / "server.log"), "-w", "start"])
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _create_database(base: str) -> None:
    """The URL's database, created when the cluster has none of that name (a new one)."""
    url = make_url(base)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not conn.exec_driver_sql(
                "SELECT 1 FROM pg_database WHERE datname = %(n)s", {"n": url.database}
            ).scalar():
                conn.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    finally:
        admin.dispose()


def test_two_postgresql_servers_with_the_same_database_and_schema(
    tmp_path, capsys, second_postgres
):
    """Real staging and production: the same schema name in the same database name on two
    clusters. The plan audited on the second is refused on the first."""
    from tests.conftest import POSTGRES_URL, require_server

    require_server("postgresql")
    schema = f"drift_twin_{uuid.uuid4().hex[:10]}"
    urls = []
    for base in (POSTGRES_URL, second_postgres):
        _create_database(base)
        url = make_url(base)
        scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
        urls.append(scoped.render_as_string(hide_password=False))
        engine = sa.create_engine(scoped)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            demo.metadata.create_all(conn)
            demo.build_shop(conn)
        engine.dispose()
    production, staging = urls
    try:
        spec = tmp_path / "drift.toml"
        spec.write_text(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{staging}"'))
        audit = tmp_path / "audit"
        assert main(["-q", "audit", "-c", str(spec), "-o", str(audit)]) == 1
        assert main(["-q", "approve", str(audit), "--by", "alice"]) == 0
        capsys.readouterr()
        assert main(["-q", "apply", str(audit), "--db", production]) == 2
        err = capsys.readouterr().err
        assert err.startswith("drift: refused: the target is not the audited server (audited "), err
        assert main(["-q", "apply", str(audit), "--db", staging]) == 0
    finally:
        for url in urls:
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            engine.dispose()


# --------------------------------------------------------------------------- the scripts

SCRIPT_TABLES = ("inventory", "orders", "stock_events", "order_events", "drift_remediation_log")


def _other_server(plan: Path, server: str) -> bytes:
    plan_id = json.loads((plan / "plan.json").read_text())["plan_id"]
    return (
        f"drift: refused: plan {plan_id} was audited on another server ({server}); run this "
        "script on that server, or audit this one and plan again; nothing was changed"
    ).encode()


def _has_history(backend) -> bool:
    with backend.engine.connect() as conn:
        return sa.inspect(conn).has_table("drift_remediation_log")


def _scripts_refuse_other_server(backend, plan: Path, audited: str) -> None:
    """fix.sql and rollback.sql, run on ``backend``, refuse as audited on ``audited``:
    nothing changed, not even the history tables created."""
    before = table_state(backend, *SCRIPT_TABLES)
    for script in ("fix.sql", "rollback.sql"):
        result = run_client(backend, plan / script)
        assert result.returncode != 0
        assert _other_server(plan, audited) in result.stderr, result.stderr.decode()
        assert table_state(backend, *SCRIPT_TABLES) == before
        assert not _has_history(backend)


def test_the_scripts_refuse_another_server_before_they_change_anything(server_backend, tmp_path):
    """psql -f fix.sql with staging's plan on production: drift apply refused it, the script
    ran. Now both scripts refuse, before even the history tables are created."""
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    live = server_identity_of(backend.url)
    last = live.split()[-1]
    others = [live.replace(last, "9" * len(last))]
    if backend.name == "mysql" and last.swapcase() != last:
        # MariaDB's server_uid is base64: under a case-insensitive collation it passed.
        others.append(live.replace(last, last.swapcase()))
    before = table_state(backend, *SCRIPT_TABLES)
    for other in others:
        _replan(audit, server=other)
        approve(audit, "alice")  # the scripts are the plan's renderings (check_scripts)
        _scripts_refuse_other_server(backend, plan, other)
    _replan(audit, server=live)
    fixed = run_client(backend, plan / "fix.sql")
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert table_state(backend, "inventory", "orders") != {
        k: before[k] for k in ("inventory", "orders")
    }
    undone = run_client(backend, plan / "rollback.sql")
    assert undone.returncode == 0, undone.stderr.decode()
    assert table_state(backend, "inventory", "orders") == {
        k: before[k] for k in ("inventory", "orders")
    }


def test_psql_without_on_error_stop_changes_nothing_on_another_server(tmp_path):
    """psql goes on after an error unless told ON_ERROR_STOP (the header's Run line says
    it; a person may not): the refused check must still leave the fix undone."""
    backend = next(gen := make_backend("postgresql", tmp_path))
    try:
        audit = audited_shop(backend, tmp_path)
        live = server_identity_of(backend.url)
        other = live.replace(live.split()[-1], "9" * len(live.split()[-1]))
        _replan(audit, server=other)
        before = table_state(backend, *SCRIPT_TABLES)
        command, env = backend.client_command()
        at = command.index("ON_ERROR_STOP=1")
        del command[at - 1 : at + 1]
        for script in ("fix.sql", "rollback.sql"):
            result = subprocess.run(
                command,
                input=(audit / "plan" / script).read_bytes(),
                env=env,
                capture_output=True,
                timeout=120,
            )
            assert _other_server(audit / "plan", other) in result.stderr, result.stderr.decode()
            assert table_state(backend, *SCRIPT_TABLES) == before
    finally:
        gen.close()


@pytest.mark.parametrize("recorded", ["unreadable", "older plan"])
def test_scripts_of_a_plan_without_a_server_identity_do_not_check_it(
    server_backend, tmp_path, recorded
):
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    if recorded == "unreadable":
        target = json.loads((audit / "target.json").read_text())
        target["fingerprint"] |= {"server": None, "server_note": "role app may not call it"}
        (audit / "target.json").write_text(json.dumps(target))
        write_plan(audit, build_plan(audit, PlanOptions(delete_orphans=True)))
    else:
        _replan(audit, server=None)  # a target.json written before the server was recorded
    approve(audit, "alice")
    for script in ("fix.sql", "rollback.sql"):
        text = (audit / "plan" / script).read_text()
        header = [line for line in text.splitlines() if line.startswith("-- ")]
        assert "another server" not in text
        if recorded == "unreadable":
            assert (
                "-- server: unknown (the audit could not read its identity: role app may not "
                "call it)" in header
            )
            assert "-- This script does not check which server it runs on." in header
        else:  # rendered as before the server was recorded: no line, no check
            assert not [line for line in header if "server" in line]
    result = run_client(backend, audit / "plan" / "fix.sql")
    assert result.returncode == 0, result.stderr.decode()


def test_a_sqlite_script_says_it_does_not_check_the_file(sqlite_backend, tmp_path):
    audit = audited_shop(sqlite_backend, tmp_path)
    text = (audit / "plan" / "fix.sql").read_text()
    assert f"-- server: {server_identity_of(sqlite_backend.url)}\n" in text
    assert "-- This script does not check which file it runs on" in text
    assert "another server" not in text


@contextlib.contextmanager
def _scratch_backend(base_url: str, tmp_path: Path) -> Iterator[Backend]:
    with scratch_database(base_url, tmp_path) as url:
        schema = str(make_url(url).query["options"]).split("search_path=", 1)[1]
        engine = sa.create_engine(url)
        try:
            yield Backend(
                name="postgresql", url=url, engine=engine, tmp_path=tmp_path, schema=schema
            )
        finally:
            engine.dispose()


def _psql_as(backend, role: str, script: Path) -> subprocess.CompletedProcess:
    command, env = backend.client_command()
    command[command.index("-U") + 1] = role
    return subprocess.run(
        command, input=script.read_bytes(), env=env, capture_output=True, timeout=120
    )


def test_a_script_audited_on_one_postgresql_cluster_refuses_another(tmp_path, second_postgres):
    """Real staging and production clusters: psql -f fix.sql of staging's plan against
    production refuses and changes nothing there; on staging, a role that may not read
    the identity is told the GRANT; staging's own superuser runs it."""
    from tests.conftest import POSTGRES_URL, require_server

    require_server("postgresql")
    _create_database(second_postgres)
    with (
        _scratch_backend(POSTGRES_URL, tmp_path) as production,
        _scratch_backend(second_postgres, tmp_path) as staging,
    ):
        with production.engine.begin() as conn:
            demo.metadata.create_all(conn)
            demo.build_shop(conn)
        audit = audited_shop(staging, tmp_path)
        plan = audit / "plan"
        audited = server_identity_of(staging.url)
        assert audited != server_identity_of(production.url)
        before = table_state(production, *SCRIPT_TABLES)
        _scripts_refuse_other_server(production, plan, audited)

        staged = table_state(staging, *SCRIPT_TABLES)
        role = f"drift_app_{uuid.uuid4().hex[:8]}"
        staging.execute(
            "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC; "
            f'CREATE ROLE "{role}" LOGIN'
        )
        denied = _psql_as(staging, role, plan / "fix.sql")
        assert denied.returncode != 0
        assert (
            b"cannot call pg_control_system() to tell whether this is that server (GRANT EXECUTE "
            b"ON FUNCTION pg_catalog.pg_control_system() TO the role" in denied.stderr
        ), denied.stderr.decode()
        assert table_state(staging, *SCRIPT_TABLES) == staged
        assert not _has_history(staging)

        fixed = run_client(staging, plan / "fix.sql")
        assert fixed.returncode == 0, fixed.stderr.decode()
        assert staging.scalar("SELECT count(*) FROM drift_remediation_log") == 1
        assert table_state(production, *SCRIPT_TABLES) == before
