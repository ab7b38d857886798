"""Approvals: a person's sign-off, bound to the SHA-256 of the files that decide what runs.

``plan/approvals.json`` holds ``{"approvals": [{"by", "at", "note",
"plan_sha256", "for", "files", "hmac"?}]}``; ``for`` is ``fix`` or ``rollback`` (a
rollback needs its own approval). ``plan_sha256`` binds plan.json, fix.sql,
rollback.sql and the audit's target.json (:func:`remediate.plan.plan_sha256`);
``files`` holds each file's own hash, only to name the file that changed when
the plan no longer matches. With ``DRIFT_APPROVAL_KEY`` set, each approval
carries an HMAC-SHA256 over its hash, purpose, approver and time, and
:func:`check_approvals` rejects any approval that does not verify: write access
to the folder is not enough to forge one.

Approvals made before target.json was bound (their hash covers the plan's three
files only) are refused with their own message: they never vouched for
target.json, so whether it changed since cannot be told.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import OutputError, PlanError, RefusedError
from remediate.plan import (
    APPROVALS,
    approved_files,
    combined_sha256,
    file_sha256s,
    legacy_plan_sha256,
    load_checked_plan,
    plan_dir,
)

KEY_ENV = "DRIFT_APPROVAL_KEY"
PURPOSES = ("fix", "rollback")


@dataclass(frozen=True)
class Approval:
    by: str
    at: str
    note: str | None
    plan_sha256: str
    purpose: str = "fix"
    hmac: str | None = None
    files: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "by": self.by,
            "at": self.at,
            "note": self.note,
            "plan_sha256": self.plan_sha256,
            "for": self.purpose,
        }
        if self.files is not None:
            data["files"] = dict(self.files)
        if self.hmac is not None:
            data["hmac"] = self.hmac
        return data


def _mac(key: str, approval: Approval) -> str:
    message = "\n".join([approval.plan_sha256, approval.purpose, approval.by, approval.at])
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def read_approvals(plan: str | Path) -> list[Approval]:
    path = plan_dir(plan) / APPROVALS
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            Approval(
                by=a["by"],
                at=a["at"],
                note=a.get("note"),
                plan_sha256=a["plan_sha256"],
                purpose=a.get("for", "fix"),
                hmac=a.get("hmac"),
                files=_files(a.get("files")),
            )
            for a in data["approvals"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RefusedError(f"{path} is unreadable or malformed: {exc}") from None


def approve(plan: str | Path, by: str, note: str | None = None, purpose: str = "fix") -> Approval:
    """Record an approval of the plan's current files."""
    if not by.strip():
        raise PlanError("--by: an approver name is required")
    if purpose not in PURPOSES:
        raise PlanError(f"unknown approval purpose {purpose!r}")
    folder = plan_dir(plan)
    # A malformed or inconsistent plan cannot be approved; the hashes approved are those of
    # the very bytes checked (each file is read once).
    hashes = load_checked_plan(folder).hashes
    approval = Approval(
        by=by.strip(),
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        note=note,
        plan_sha256=combined_sha256(hashes),
        purpose=purpose,
        files=hashes,
    )
    key = os.environ.get(KEY_ENV)
    if key:
        approval = Approval(**{**approval.__dict__, "hmac": _mac(key, approval)})
    existing = read_approvals(folder)
    if any(
        a.by == approval.by and a.purpose == purpose and a.plan_sha256 == approval.plan_sha256
        for a in existing
    ):
        raise PlanError(f"{approval.by} has already approved this plan for {purpose}")
    data = {"approvals": [a.to_json() for a in [*existing, approval]]}
    tmp = folder / f".{APPROVALS}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, folder / APPROVALS)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {folder / APPROVALS}: {exc.strerror}") from None
    return approval


def check_approvals(
    plan: str | Path,
    require: int = 1,
    purpose: str = "fix",
    hashes: Mapping[str, str] | None = None,
) -> list[Approval]:
    """The valid approvals for ``purpose``; refuses when there are too few or any is forged.

    An approval of other files (the plan changed after it was given) does not
    count, and when every approval is for other files the plan was tampered with.
    ``hashes`` are the approved files' hashes (:func:`remediate.plan.file_sha256s`) of the
    bytes the caller read and goes on to use (:func:`remediate.plan.read_plan_files`);
    read here when not given.
    """
    folder = plan_dir(plan)
    hashes = dict(file_sha256s(folder) if hashes is None else hashes)
    current = combined_sha256(hashes)
    approvals = [a for a in read_approvals(folder) if a.purpose == purpose]
    what = "rollback" if purpose == "rollback" else "plan"
    if not approvals:
        hint = " --rollback" if purpose == "rollback" else ""
        raise RefusedError(
            f"refused: the {what} is not approved (run: drift approve {folder} --by NAME{hint})"
        )
    key = os.environ.get(KEY_ENV)
    if key:
        for a in approvals:
            if a.hmac is None or not hmac.compare_digest(a.hmac, _mac(key, a)):
                raise RefusedError(
                    f"refused: the approval by {a.by} does not verify with DRIFT_APPROVAL_KEY"
                )
    valid = [a for a in approvals if a.plan_sha256 == current]
    if not valid:
        raise RefusedError(_not_approved(folder, approvals, current, hashes))
    approvers = sorted({a.by for a in valid})
    if len(approvers) < require:
        stale = _stale([a for a in approvals if a.by not in approvers], hashes)
        raise RefusedError(
            f"refused: the {what} needs {require} approver(s), it has {len(approvers)} "
            f"({', '.join(approvers)}){stale}"
        )
    return valid


def _files(value: Any) -> dict[str, str] | None:
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    return None  # malformed: only the message that names a changed file does without it


def _diagnosis(approval: Approval, hashes: dict[str, str]) -> tuple[str, list[str]]:
    """Why an approval is not of the current files: ("legacy", []) for an approval made
    before target.json was bound, ("changed", names) when its own file hashes (which must
    add up to its plan_sha256) say which files changed, ("unknown", []) otherwise."""
    if approval.plan_sha256 == legacy_plan_sha256(hashes):
        return "legacy", []
    files = approval.files
    if (
        files is not None
        and list(files) == list(hashes)
        and combined_sha256(files) == approval.plan_sha256
    ):
        return "changed", [name for name in hashes if files[name] != hashes[name]]
    return "unknown", []


def _not_approved(
    folder: Path, approvals: list[Approval], current: str, hashes: dict[str, str]
) -> str:
    paths = approved_files(folder)
    diagnoses = [(a, *_diagnosis(a, hashes)) for a in approvals]
    legacy = [a for a, kind, _ in diagnoses if kind == "legacy"]
    if legacy:
        return (
            f"refused: the approval by {legacy[-1].by} was made by an older drift and does not "
            "cover target.json; review the plan and approve it again"
        )
    changed = [names for _, kind, names in diagnoses if kind == "changed" and names]
    which = f"{', '.join(str(paths[n]) for n in changed[-1])} changed; " if changed else ""
    return (
        f"refused: the plan's files changed after approval ({which}sha256 {current[:16]} "
        "was not approved); review the plan and approve it again"
    )


def _stale(approvals: list[Approval], hashes: dict[str, str]) -> str:
    """Why the approvals that do not count do not (for the too-few-approvers refusal)."""
    if not approvals:
        return ""
    notes = []
    for a in approvals:
        kind, names = _diagnosis(a, hashes)
        if kind == "legacy":
            notes.append(f"{a.by}'s was made by an older drift and does not cover target.json")
        elif names:
            notes.append(f"{a.by}'s was for other files ({', '.join(names)} changed since)")
        else:
            notes.append(f"{a.by}'s was for other files")
    return "; not counted: " + "; ".join(dict.fromkeys(notes))
