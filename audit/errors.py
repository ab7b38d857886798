"""The one exception family of drift.

Every error a user can cause or meet is a :class:`DriftError`. Each class knows
its exit code; the CLI catches the family in one place, prints the message as
one line on stderr prefixed with ``drift:``, and exits with that code.

Exit codes (the contract, also in README.md):

* 0 -- no drift (or the command succeeded)
* 1 -- drift found / a threshold was crossed
* 2 -- usage, spec, database or output error; nothing was changed
* 130 -- interrupted
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DriftError(Exception):
    """Base of every error drift reports to its user."""

    exit_code = 2


class SpecError(DriftError):
    """The spec file is malformed or does not match the database."""


class DatabaseError(DriftError):
    """The database could not be reached or answered with an error."""


class DataError(DriftError):
    """The data cannot be audited as the spec says (e.g. text summed as numbers)."""


class OutputError(DriftError):
    """An output folder or file could not be written or read back."""


class AuditFolderError(DriftError):
    """An audit folder is missing, incomplete or corrupt."""


class StateError(DriftError):
    """The incremental-audit state file is unreadable, corrupt or cannot be written."""


class PlanError(DriftError):
    """A remediation plan is invalid, or cannot be built or applied."""


class RefusedError(DriftError):
    """A safeguard refused to act (no approval, tampering, wrong target...)."""


class GuardFailedError(DriftError):
    """A remediation guard missed: the data changed since the audit."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean "x"?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class VerifyError(DriftError):
    """A fix did not remove the drift it targeted (the apply was rolled back)."""
