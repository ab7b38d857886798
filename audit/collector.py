"""Pausing Python's cyclic garbage collector around work that builds big, long-lived data.

Rendering a report, building or writing a plan and applying one each allocate
some 10^5 to 10^6 objects that all live until the work ends. Each counts
towards the collector's thresholds, and every full pass walks every object of
the process again: up to half of the work's time. Reference counting still
frees nearly everything while the collector is paused.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; afterwards the collector is as it was.

    Also a decorator (``@collector_paused()``). A caller that turned the
    collector off keeps it off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
