"""drift's audit: rebuild expected state from event tables and diff it in the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from audit.errors import DriftError
    from audit.run import AuditResult, run_audit
    from audit.spec import Spec, load_spec, parse_spec

# The public API, imported on first use: `drift --version` or `drift approve` should not
# pay for SQLAlchemy and pyarrow.
_LAZY = {
    "DriftError": "audit.errors",
    "AuditResult": "audit.run",
    "run_audit": "audit.run",
    "Spec": "audit.spec",
    "load_spec": "audit.spec",
    "parse_spec": "audit.spec",
}

__all__ = [
    "AuditResult",
    "DriftError",
    "Spec",
    "__version__",
    "load_spec",
    "parse_spec",
    "run_audit",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
