"""Job-queue presets: the job tables of common Python job queues, as job logs.

Filled in below; each preset maps a real library's own tables onto the
columns a job log needs (id, job name, worker, attempt, status, start, finish).
"""

from __future__ import annotations

PRESETS: dict[str, object] = {"procrastinate": None, "oban": None, "celery": None}
