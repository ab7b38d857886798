"""Run a Python module as ``__main__`` and record its own peak RSS.

    python -m benchmarks.measure RSS_FILE MODULE [ARGS...]

The peak is ``VmHWM`` from ``/proc/self/status``, read when the module ends
(by an exit handler: the ``drift`` command ends its process without the
interpreter's teardown, but after the exit handlers).
``ru_maxrss`` of a child cannot be used: Linux carries the forking parent's
peak into the child's, so a large harness would inflate every contender.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    rss_file, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    atexit.register(lambda: Path(rss_file).write_text(str(peak_rss_kb())))
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
