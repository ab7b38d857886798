"""Survive SIGKILL after batch 2 of a batched apply.

Apply under traffic and random kill points: tests/test_reliability_apply.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

from remediate.approval import approve
from tests.remediation_helpers import audited_shop, findings, shop_spec

pytestmark = pytest.mark.slow

SKUS = ["SKU-003", "SKU-006", "SKU-001", "SKU-002"]  # the two drifted ones first


@pytest.mark.scenario("SIGKILL after batch 2 of a batched apply; resume completes")
def test_sigkill_mid_batch_leaves_whole_batches_and_resumes(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    spec = shop_spec(backend)
    before = findings(spec, backend, tmp_path, "before")
    command = [sys.executable, "-m", "drift", "apply", str(audit), "--db", backend.url]
    command += ["--batch-size", "1"]
    env = dict(os.environ, DRIFT_TEST_PAUSE_AFTER_BATCH="2:120")
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        lines = []
        for raw in proc.stderr:
            lines.append(raw.decode())
            if "batch 2/5 committed" in lines[-1]:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)

    with backend.engine.connect() as conn:
        batches = conn.execute(sa.text("SELECT batch_no FROM drift_remediation_batches"))
        assert sorted(batches.scalars()) == [1, 2]
        outcome = conn.execute(sa.text("SELECT outcome FROM drift_remediation_log")).scalar_one()
        assert outcome == "in_progress"
        changed = conn.execute(sa.text("SELECT action_id FROM drift_remediation_rows"))
        changed_ids = sorted(changed.scalars())
    assert changed_ids == [1, 2]  # batches 1 and 2 hold exactly actions 1 and 2
    remaining = findings(spec, backend, tmp_path, "killed")
    assert remaining == {f for f in before if f[1] not in ('["SKU-003"]', '["SKU-006"]')}

    # Resumed without repeating --batch-size: the plan's recorded batch size is used.
    resume = [c for c in command if c not in ("--batch-size", "1")]
    second = subprocess.run(resume, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()
    assert b"resuming the batched fix with --batch-size 1" in second.stderr
    assert b"resuming: 2 of 5 batch(es) already committed" in second.stderr
    assert findings(spec, backend, tmp_path, "after") == set()
    with backend.engine.connect() as conn:
        log = conn.execute(sa.text("SELECT outcome, rows_changed FROM drift_remediation_log"))
        assert tuple(log.one()) == ("applied", 5)
