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


def _edit_action(plan: Path, action_id: int | None, **fields: object) -> None:
    """Change an action's data (None: the plan's) in plan.json, keeping each action's sql
    (what fix.sql shows)."""
    data = json.loads((plan / "plan.json").read_text(), parse_float=str)
    action = data if action_id is None else next(a for a in data["actions"] if a["id"] == action_id)
    for name, value in fields.items():
        action[name] = value(action[name]) if callable(value) else value
    (plan / "plan.json").write_text(json.dumps(data))


# Each edit keeps fix.sql and rollback.sql the renderings of plan.json (they show each
# action's stored sql), but drift apply would run something else. (action edited, None for
# the plan; action reported; the edit)
DATA_EDITS = {
    "insert-extra-column": (5, 5, {"after": lambda row: row | {"updated_at": "2000-01-01"}}),
    "insert-other-value": (5, 5, {"after": lambda row: row | {"status": "cancelled"}}),
    "delta-other-value": (1, 1, {"after": 1051}),
    "cas-other-guard": (4, 4, {"before": "cancelled"}),
    "other-key": (2, 2, {"key": '["SKU-001"]'}),
    "delete-fewer-columns": (3, 3, {"before": lambda row: {"sku": row["sku"]}}),
    "entity-other-key": (
        None,
        1,
        {"entities": lambda e: e | {"inventory": e["inventory"] | {"key": ["updated_at"]}}},
    ),
    # Data that cannot be rendered at all (text column, number value): refused the same way.
    "cas-guard-of-another-type": (4, 4, {"before": 5}),
}


@pytest.mark.scenario("plan.json data edited under its SQL: approve and apply refuse")
@pytest.mark.parametrize("edit", DATA_EDITS)
def test_action_data_that_does_not_render_to_its_sql_is_refused(
    sqlite_backend, tmp_path, capsys, edit
):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    edited, action_id, fields = DATA_EDITS[edit]
    _edit_action(plan, edited, **fields)
    fix_sql = (plan / "fix.sql").read_text()
    check_scripts_only(plan)  # the scripts still match plan.json's sql
    before = table_state(backend, *TABLES)
    message = f"the data of action {action_id} "

    capsys.readouterr()
    assert main(["approve", str(plan), "--by", "alice"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drift: ") and err.count("\n") == 1 and message in err, err
    assert "does not render to" in err and "re-plan with: drift plan" in err
    assert not (plan / "approvals.json").exists()

    # Approved anyway (as drift approve did before it checked the data): apply, its dry
    # run and rollback refuse too, and nothing changes.
    _approve_unchecked(plan, "fix", "rollback")
    for args in (
        ["apply", str(plan), "--db", backend.url],
        ["apply", str(plan), "--db", backend.url, "--dry-run"],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert table_state(backend, *TABLES) == before
    assert (plan / "fix.sql").read_text() == fix_sql


def test_rollback_statements_that_do_not_render_from_the_data_are_refused(
    sqlite_backend, tmp_path, capsys
):
    """A rollback statement edited in plan.json, and rollback.sql rendered again from it:
    approve refuses; approved anyway, drift apply (which runs the fix statements, checked)
    works and drift rollback refuses."""
    from remediate.plan import ROLLBACK_SQL, load_plan, render_script

    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    _edit_action(plan, 1, rollback_sql=["UPDATE inventory SET on_hand = 0;"])
    (plan / ROLLBACK_SQL).write_text(render_script(load_plan(plan), "rollback"))
    check_scripts_only(plan)
    capsys.readouterr()
    assert main(["approve", str(plan), "--by", "alice", "--rollback"]) == 2
    assert "the data of action 1 " in capsys.readouterr().err
    _approve_unchecked(plan, "fix", "rollback")
    assert main(["apply", str(plan), "--db", backend.url]) == 0
    applied = table_state(backend, *TABLES)
    capsys.readouterr()
    assert main(["rollback", str(plan), "--db", backend.url]) == 2
    assert "the data of action 1 " in capsys.readouterr().err
    assert table_state(backend, *TABLES) == applied


def test_a_manual_action_with_sql_is_refused(sqlite_backend, tmp_path, capsys):
    plan = audited_shop(sqlite_backend, tmp_path) / "plan"
    _edit_action(plan, 6, sql=["DELETE FROM orders;"])
    check_scripts_only(plan)  # the scripts leave manual actions out
    capsys.readouterr()
    assert main(["approve", str(plan), "--by", "alice"]) == 2
    assert "the data of action 6 (inventory" in capsys.readouterr().err


def check_scripts_only(plan: Path) -> None:
    """fix.sql and rollback.sql are exactly the renderings of plan.json."""
    from remediate.plan import FIX_SQL, ROLLBACK_SQL, load_plan, render_script

    loaded = load_plan(plan)
    assert (plan / FIX_SQL).read_text() == render_script(loaded, "fix")
    assert (plan / ROLLBACK_SQL).read_text() == render_script(loaded, "rollback")


def _approve_unchecked(plan: Path, *purposes: str) -> None:
    from remediate.plan import plan_sha256

    approvals = [
        {"by": "alice", "at": "2026-01-01T00:00:00+00:00", "note": None, "for": purpose}
        | {"plan_sha256": plan_sha256(plan)}
        for purpose in purposes
    ]
    (plan / "approvals.json").write_text(json.dumps({"approvals": approvals}))
