"""Approvals bind every file that decides what apply and rollback do, target.json included."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from audit.errors import RefusedError
from drift.cli import main
from remediate.apply import apply_plan
from remediate.approval import approve
from remediate.plan import load_checked_plan
from tests.remediation_helpers import audited_shop, table_state

TABLES = ("inventory", "orders", "drift_remediation_log")


def _column(target: dict, entity: str, column: str) -> dict:
    return next(c for c in target["entities"][entity]["columns"] if c["name"] == column)


# Edits of target.json that, before it was bound, went unnoticed by apply and rollback (the
# first five) or were refused as "plan.json edited" (the last).
EDITS = {
    "nullable flags": lambda t: [
        c.update(nullable=not c["nullable"]) for e in t["entities"].values() for c in e["columns"]
    ],
    "has_default": lambda t: _column(t, "orders", "status").update(has_default=True),
    "fingerprint": lambda t: t["fingerprint"].update(database="/elsewhere.db"),
    "entity key": lambda t: t["entities"]["orders"].update(key=["status"]),
    "type text": lambda t: _column(t, "orders", "status").update(type="TEXT"),
    "family": lambda t: _column(t, "inventory", "on_hand").update(family="string"),
}


@pytest.mark.scenario("apply refusals (approval, tampering, HMAC, target, rollback)")
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_to_target_json_after_approval_is_refused_naming_it(
    sqlite_backend, tmp_path, capsys, edit
):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    path = audit / "target.json"
    original = path.read_bytes()
    assert main(["approve", str(audit), "--by", "alice"]) == 0
    assert main(["approve", str(audit), "--by", "alice", "--rollback"]) == 0

    def tamper() -> None:
        data = json.loads(original)
        EDITS[edit](data)
        path.write_text(json.dumps(data))

    def refused(*args: str) -> None:
        before = table_state(backend, *TABLES)
        capsys.readouterr()
        assert main([*args, str(audit), "--db", backend.url]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"drift: refused: the plan's files changed after approval ({path} changed; "
            f"sha256 {err.split('sha256 ')[1][:16]} was not approved); review the plan and "
            "approve it again\n"
        )
        assert table_state(backend, *TABLES) == before

    tamper()
    refused("apply")
    path.write_bytes(original)  # the approved file again: the approval holds again
    assert main(["apply", str(audit), "--db", backend.url]) == 0
    tamper()
    refused("rollback")
    path.write_bytes(original)
    assert main(["rollback", str(audit), "--db", backend.url]) == 0


def test_an_approver_of_other_files_is_not_counted_and_the_refusal_says_why(
    sqlite_backend, tmp_path, capsys
):
    audit = audited_shop(sqlite_backend, tmp_path)
    approve(audit, "alice")
    path = audit / "target.json"
    data = json.loads(path.read_text())
    EDITS["nullable flags"](data)
    path.write_text(json.dumps(data))
    approve(audit, "bob")  # bob approves the edited files (they still render the scripts)
    capsys.readouterr()
    assert main(["apply", str(audit), "--db", sqlite_backend.url, "--require", "2"]) == 2
    assert capsys.readouterr().err == (
        "drift: refused: the plan needs 2 approver(s), it has 1 (bob); not counted: "
        "alice's was for other files (target.json changed since)\n"
    )


def _legacy_sha256(plan: Path) -> str:
    """The hash drift wrote into approvals before target.json was bound."""
    digest = hashlib.sha256()
    for name in ("plan.json", "fix.sql", "rollback.sql"):
        data = (plan / name).read_bytes()
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_an_approval_made_before_target_json_was_bound_is_refused(
    sqlite_backend, tmp_path, capsys, monkeypatch, signed
):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    old = {
        "by": "alice",
        "at": "2026-11-01T10:00:00+00:00",
        "note": "approved with the previous release",
        "plan_sha256": _legacy_sha256(plan),
        "for": "fix",
    }
    if signed:
        monkeypatch.setenv("DRIFT_APPROVAL_KEY", "s3cret")
        message = "\n".join([old["plan_sha256"], "fix", old["by"], old["at"]])
        old["hmac"] = hmac.new(b"s3cret", message.encode(), hashlib.sha256).hexdigest()
    (plan / "approvals.json").write_text(json.dumps({"approvals": [old]}))
    before = table_state(backend, *TABLES)
    assert main(["apply", str(audit), "--db", backend.url]) == 2
    assert capsys.readouterr().err == (
        "drift: refused: the approval by alice was made by an older drift and does not cover "
        "target.json; review the plan and approve it again\n"
    )
    assert table_state(backend, *TABLES) == before
    approve(audit, "bob")
    assert main(["apply", str(audit), "--db", backend.url, "--require", "2"]) == 2
    assert capsys.readouterr().err == (
        "drift: refused: the plan needs 2 approver(s), it has 1 (bob); not counted: "
        "alice's was made by an older drift and does not cover target.json\n"
    )
    approve(audit, "alice")  # approving again is all it takes
    assert main(["apply", str(audit), "--db", backend.url, "--require", "2"]) == 0


def test_an_approval_records_each_files_hash(sqlite_backend, tmp_path):
    audit = audited_shop(sqlite_backend, tmp_path)
    approval = approve(audit, "alice")
    recorded = json.loads((audit / "plan" / "approvals.json").read_text())["approvals"][0]
    assert list(recorded["files"]) == ["plan.json", "fix.sql", "rollback.sql", "target.json"]
    assert (
        recorded["files"]["target.json"]
        == hashlib.sha256((audit / "target.json").read_bytes()).hexdigest()
    )
    assert recorded["plan_sha256"] == approval.plan_sha256 != _legacy_sha256(audit / "plan")


# --------------------------------------------------------------------------- one read per file

APPROVED = ("plan/plan.json", "plan/fix.sql", "plan/rollback.sql", "target.json")


def _other_plan(audit: Path) -> dict[str, bytes]:
    """A consistent other plan (plan.json, fix.sql, rollback.sql that pass every check) whose
    insert of order 1041 also sets updated_at, which verify does not audit: applied, it
    leaves no drift behind, only a value nobody approved."""
    from remediate.plan import _with_sql, load_plan, plan_json, render_script
    from remediate.sql import get_script_dialect, offline_table
    from remediate.target import read_target

    plan = load_plan(audit)
    target = read_target(audit)
    script = get_script_dialect(plan.dialect)
    tables = {name: offline_table(info) for name, info in target["entities"].items()}
    actions = tuple(
        _with_sql(
            dataclasses.replace(a, after={**a.after, "updated_at": "swapped"}),
            script,
            target,
            tables,
        )
        if a.mode == "insert"
        else a
        for a in plan.actions
    )
    assert sum(a.mode == "insert" for a in actions) == 1
    other = dataclasses.replace(plan, actions=actions)
    return {
        "plan/plan.json": plan_json(other).encode(),
        "plan/fix.sql": render_script(other, "fix").encode(),
        "plan/rollback.sql": render_script(other, "rollback").encode(),
    }


def _swap_after_first_read(monkeypatch, audit: Path, swaps: dict[str, bytes]) -> Counter:
    """Each file of ``swaps`` reads as it is on disk the first time and as ``swaps`` says
    every time after (a file replaced between two reads: an editor saving, a sync tool).
    Returns the count of reads of each approved file."""
    names = {os.path.realpath(audit / name): name for name in APPROVED}
    reads: Counter = Counter()
    lock = threading.Lock()
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        data = real_read_bytes(self)
        name = names.get(os.path.realpath(self))
        if name is None:
            return data
        with lock:
            reads[name] += 1
            first = reads[name] == 1
        return data if first or name not in swaps else swaps[name]

    def read_text(self: Path, encoding: str | None = None, errors: str | None = None) -> str:
        return read_bytes(self).decode(encoding or "utf-8", errors or "strict")

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_the_other_plan_passes_every_check_but_the_approval(sqlite_backend, tmp_path):
    """The swapped-in plan of the tests below is no strawman: only the approval's hash
    tells it from the approved one."""
    audit = audited_shop(sqlite_backend, tmp_path)
    approve(audit, "alice")
    for name, data in _other_plan(audit).items():
        (audit / name).write_bytes(data)
    load_checked_plan(audit)  # a consistent plan
    with pytest.raises(RefusedError, match="files changed after approval"):
        apply_plan(audit, sqlite_backend.url)


@pytest.mark.parametrize("operation", ["fix", "rollback"])
def test_apply_runs_the_bytes_it_hashed_when_a_file_is_replaced_between_reads(
    sqlite_backend, tmp_path, monkeypatch, operation
):
    """apply hashed the files in one read and parsed them in another: a plan replaced in
    between ran unapproved (or, the other way round, an approved plan was refused)."""
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    original = table_state(backend, *TABLES)
    approve(audit, "alice")
    if operation == "rollback":
        apply_plan(audit, backend.url)
        approve(audit, "alice", purpose="rollback")
    reads = _swap_after_first_read(monkeypatch, audit, _other_plan(audit))
    result = apply_plan(audit, backend.url, operation=operation)
    monkeypatch.undo()
    assert result.rows_changed == 5
    assert dict(reads) == {name: 1 for name in APPROVED}
    state = table_state(backend, *TABLES)
    if operation == "fix":
        assert backend.scalar("SELECT updated_at FROM orders WHERE order_id = 1041") is None
    else:  # the inserted row was deleted by its approved value
        assert {k: state[k] for k in ("inventory", "orders")} == {
            k: original[k] for k in ("inventory", "orders")
        }


def test_approve_records_the_hashes_of_the_bytes_it_checked(sqlite_backend, tmp_path, monkeypatch):
    """approve checked the scripts in one read and hashed them in another: it could approve
    a fix.sql nobody's check had seen."""
    audit = audited_shop(sqlite_backend, tmp_path)
    on_disk = {name: hashlib.sha256((audit / name).read_bytes()).hexdigest() for name in APPROVED}
    reads = _swap_after_first_read(monkeypatch, audit, _other_plan(audit))
    approval = approve(audit, "alice")
    monkeypatch.undo()
    assert dict(reads) == {name: 1 for name in APPROVED}
    assert approval.files == {Path(name).name: sha for name, sha in on_disk.items()}
    assert apply_plan(audit, sqlite_backend.url).rows_changed == 5  # what is on disk
