"""drift's audit: rebuild expected state from event tables and diff it in the database."""

from __future__ import annotations

__version__ = "0.1.0"

from audit.errors import DriftError  # noqa: E402
from audit.run import AuditResult, run_audit  # noqa: E402
from audit.spec import Spec, load_spec, parse_spec  # noqa: E402

__all__ = [
    "AuditResult",
    "DriftError",
    "Spec",
    "__version__",
    "load_spec",
    "parse_spec",
    "run_audit",
]
