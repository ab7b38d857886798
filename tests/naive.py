"""Ground truth computed without drift: a plain Python fold over rows read back.

Tests compare drift's findings with what these functions say, so a bug in
drift's SQL cannot hide behind itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

Row = dict[str, Any]


def fold(
    rows: Iterable[Row],
    fold: str,
    value: Callable[[Row], Any] | None,
    where: Callable[[Row], bool] | None = None,
    order: Callable[[Row], Any] = lambda r: r["id"],
    initial: Any = None,
) -> dict[tuple, Any]:
    """Fold rows (already carrying a 'key' tuple) per key, like drift's semantics."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["key"], []).append(row)
    result: dict[tuple, Any] = {}
    for key, group in groups.items():
        contributing = [r for r in sorted(group, key=order) if where is None or where(r)]
        values = [value(r) if value else 1 for r in contributing]
        if fold == "sum":
            present = [v for v in values if v is not None]
            result[key] = (initial or 0) + sum(present)
        elif fold == "count":
            result[key] = (initial or 0) + len([v for v in values if v is not None])
        elif fold in ("min", "max"):
            present = [v for v in values if v is not None]
            result[key] = (min if fold == "min" else max)(present) if present else initial
        elif fold == "first":
            result[key] = values[0] if values else initial
        elif fold == "last":
            result[key] = values[-1] if values else initial
    return result


def same(a: Any, b: Any) -> bool:
    """Value equality across drivers (Decimal vs int vs float)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
        return Decimal(str(a)) == Decimal(str(b))
    return a == b
