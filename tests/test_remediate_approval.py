"""Approvals bind every file that decides what apply and rollback do, target.json included."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from drift.cli import main
from remediate.approval import approve
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
