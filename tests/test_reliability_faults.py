"""Faults around plans: damaged plan folders, full and read-only disks, passwords in URLs.

No damaged plan is ever approved or applied; errors are one line with exit 2;
a failed plan write leaves the old plan (or no plan) and no half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from drift.cli import main
from tests.conftest import MYSQL_URL, POSTGRES_URL, make_backend, require_server
from tests.remediation_helpers import audited_shop, table_state

TABLES = ("inventory", "orders", "drift_remediation_log")


def _damage(plan: Path, how: str) -> None:
    target = {
        "truncate-plan-json": "plan.json",
        "plan-json-not-a-plan": "plan.json",
        "plan-json-edited-value": "plan.json",
        "truncate-fix-sql": "fix.sql",
        "edit-fix-sql": "fix.sql",
        "drop-rollback-sql": "rollback.sql",
        "empty-fix-sql": "fix.sql",
    }[how]
    path = plan / target
    data = path.read_bytes()
    if how.startswith("truncate"):
        path.write_bytes(data[: len(data) // 2])
    elif how == "plan-json-not-a-plan":
        path.write_text('{"plan_id": "x", "actions": [{"id": 1}]}')
    elif how == "plan-json-edited-value":
        # Still valid JSON, but the scripts no longer render from it.
        plan_data = json.loads(data)
        plan_data["actions"][0]["sql"] = ["UPDATE inventory SET on_hand = 0"]
        path.write_text(json.dumps(plan_data))
    elif how == "edit-fix-sql":
        path.write_bytes(data.replace(b"COMMIT;", b"DELETE FROM orders;\nCOMMIT;"))
    elif how == "drop-rollback-sql":
        path.unlink()
    else:
        path.write_bytes(b"")


DAMAGES = [
    "truncate-plan-json",
    "plan-json-not-a-plan",
    "plan-json-edited-value",
    "truncate-fix-sql",
    "edit-fix-sql",
    "drop-rollback-sql",
    "empty-fix-sql",
]


@pytest.mark.scenario("damaged plan folder: approve and apply refuse, one line, exit 2")
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_plan_is_never_approved_or_applied(sqlite_backend, tmp_path, capsys, how):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    pristine = tmp_path / "pristine"
    shutil.copytree(plan, pristine)
    before = table_state(backend, *TABLES)

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main(list(args)) == 2
        out, err = capsys.readouterr()
        assert err.startswith("drift: ") and err.count("\n") == 1, err
        assert table_state(backend, *TABLES) == before
        return err

    # Damaged before approval: approve refuses, so apply has nothing valid to run.
    _damage(plan, how)
    refused("approve", str(plan), "--by", "alice")
    assert not (plan / "approvals.json").exists()
    refused("apply", str(plan), "--db", backend.url)
    # Damaged after approval: apply refuses.
    shutil.rmtree(plan)
    shutil.copytree(pristine, plan)
    assert main(["approve", str(plan), "--by", "alice"]) == 0
    _damage(plan, how)
    refused("apply", str(plan), "--db", backend.url)
    refused("rollback", str(plan), "--db", backend.url)


def _tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)


def _fill(path: Path) -> None:
    """Fill the file system ``path`` is on."""
    with path.open("wb", buffering=0) as fh:
        try:
            while fh.write(b"\0" * 4096):
                pass
        except OSError:
            pass


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
@pytest.mark.scenario("disk full while writing a plan: no half plan, old plan intact")
def test_disk_full_while_planning_leaves_no_half_plan(sqlite_backend, tmp_path, capsys):
    audit = audited_shop(sqlite_backend, tmp_path)
    disk = tmp_path / "disk"
    _tmpfs(disk, "1m")
    try:
        copy = disk / "audit"
        shutil.copytree(audit, copy, ignore=shutil.ignore_patterns("report.html"))
        assert main(["approve", str(copy), "--by", "alice"]) == 0
        old = {p.name: p.read_bytes() for p in (copy / "plan").iterdir()}
        _fill(disk / "filler")
        capsys.readouterr()
        assert main(["plan", str(copy), "--cas"]) == 2
        _, err = capsys.readouterr()
        assert err.startswith(f"drift: cannot write the plan in {copy}") and err.count("\n") == 1
        assert "No space left on device" in err
        # The old plan and its approval are untouched; no staging folder is left behind.
        assert {p.name: p.read_bytes() for p in (copy / "plan").iterdir()} == old
        assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []
        # With no old plan, a failed plan write leaves no plan at all.
        shutil.rmtree(copy / "plan")
        _fill(disk / "filler2")
        assert main(["plan", str(copy)]) == 2
        assert not (copy / "plan").exists()
        assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []
        (disk / "filler").unlink()
        assert main(["plan", str(copy)]) == 0  # and the retry works once there is room
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@needs_root
@pytest.mark.scenario("read-only plan folder: plan and approve fail with one line, exit 2")
def test_read_only_folder(sqlite_backend, tmp_path, capsys):
    audit = audited_shop(sqlite_backend, tmp_path)
    disk = tmp_path / "disk"
    _tmpfs(disk, "4m")
    try:
        copy = disk / "audit"
        shutil.copytree(audit, copy)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        old = {p.name: p.read_bytes() for p in (copy / "plan").iterdir()}
        capsys.readouterr()
        for args in (["plan", str(copy)], ["approve", str(copy), "--by", "alice"]):
            assert main(args) == 2
            _, err = capsys.readouterr()
            assert err.startswith("drift: cannot write ") and err.count("\n") == 1, err
            assert "Read-only file system" in err
        assert {p.name: p.read_bytes() for p in (copy / "plan").iterdir()} == old
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --------------------------------------------------------------------------- passwords


@pytest.mark.scenario("password in the URL never reaches plan/approve/apply/verify/rollback output")
@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_password_never_in_remediation_outputs(capsys, tmp_path, server, monkeypatch):
    require_server(server)
    secret = f"pw-{uuid.uuid4().hex[:10]}-S3cret"
    user = f"drift_pw_{uuid.uuid4().hex[:8]}"
    base = make_url(POSTGRES_URL if server == "postgresql" else MYSQL_URL)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if server == "postgresql":
            conn.execute(sa.text(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{secret}'"))
        else:
            for host in ("%", "localhost"):
                conn.execute(sa.text(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{secret}'"))
                conn.execute(sa.text(f"GRANT ALL ON *.* TO '{user}'@'{host}'"))
    gen = make_backend(server, tmp_path)
    backend = next(gen)
    try:
        url = make_url(backend.url).set(username=user, password=secret)
        url_text = url.render_as_string(hide_password=False)
        from drift import demo

        with backend.engine.begin() as conn:
            demo.metadata.create_all(conn)
            demo.build_shop(conn)
        spec = tmp_path / "drift.toml"
        spec.write_text(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{url_text}"'))
        monkeypatch.setenv("DRIFT_DATABASE_URL", url_text)
        out = tmp_path / "audit"
        steps = [
            (["audit", "-c", str(spec), "-o", str(out), "--db", url_text], 1),
            (["plan", str(out), "--delete-orphans"], 0),
            (["approve", str(out), "--by", "alice"], 0),
            (["apply", str(out), "--db", url_text, "--dry-run"], 0),
            (["apply", str(out), "--db", url_text, "--batch-size", "2"], 0),
            (["verify", str(out), "--db", url_text], 0),
            (["approve", str(out), "--by", "bob", "--rollback"], 0),
            (["rollback", str(out), "--db", url_text], 0),
            (["apply", str(out), "--db", url_text.replace(secret, secret + "x")], 2),
        ]
        texts = []
        for args, code in steps:
            got = main(args)
            o, e = capsys.readouterr()
            assert got == code, (args[0], got, e)
            texts += [o, e]
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.suffix != ".db" and path != spec:  # spec: user input
                texts.append(path.read_bytes().decode("utf-8", "replace"))
        with backend.engine.connect() as conn:
            for table in (
                "drift_remediation_log",
                "drift_remediation_batches",
                "drift_remediation_rows",
            ):
                rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
                assert rows
                texts.append(repr(rows))
        assert len(texts) > 25
        for text in texts:
            assert secret not in text
    finally:
        next(gen, None)
        with admin.connect() as conn:
            if server == "postgresql":
                conn.execute(sa.text(f"DROP ROLE {user}"))
            else:
                for host in ("%", "localhost"):
                    conn.execute(sa.text(f"DROP USER '{user}'@'{host}'"))
        admin.dispose()
