"""Apply while real worker processes write, and survive SIGKILL mid-way through batches."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from remediate.apply import apply_plan
from remediate.approval import approve
from tests.remediation_helpers import audited_shop, findings, shop_spec

pytestmark = pytest.mark.slow

SKUS = ["SKU-003", "SKU-006", "SKU-001", "SKU-002"]  # the two drifted ones first


def _worker(url: str, seed: int, stop, counter) -> None:  # type: ignore[no-untyped-def]
    """A correct worker: the counter and its stock event change in one transaction."""
    import random

    engine = sa.create_engine(url)
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            sku = rng.choice(SKUS)
            qty = rng.randint(1, 5)
            for _attempt in range(20):
                try:
                    with engine.begin() as conn:
                        conn.execute(
                            sa.text("UPDATE inventory SET on_hand = on_hand + :q WHERE sku = :s"),
                            {"q": qty, "s": sku},
                        )
                        conn.execute(
                            sa.text(
                                "INSERT INTO stock_events (sku, kind, qty, created_at) "
                                "VALUES (:s, 'received', :q, '2026-03-15T00:00:00Z')"
                            ),
                            {"q": qty, "s": sku},
                        )
                    break
                except sa.exc.OperationalError:  # deadlock/lock wait: retry, as workers do
                    time.sleep(0.01)
            with counter.get_lock():
                counter.value += 1
    finally:
        engine.dispose()


def test_apply_while_workers_write_loses_nothing(server_backend, tmp_path):
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    ctx = multiprocessing.get_context("spawn")
    stop, counter = ctx.Event(), ctx.Value("i", 0)
    workers = [
        ctx.Process(target=_worker, args=(backend.url, seed, stop, counter)) for seed in range(3)
    ]
    for w in workers:
        w.start()
    try:
        deadline = time.time() + 60
        while counter.value < 30 and time.time() < deadline:
            time.sleep(0.05)
        during_start = counter.value
        result = apply_plan(audit, backend.url, lock_timeout=10)
        during_end = counter.value
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert all(w.exitcode == 0 for w in workers)
    assert during_start >= 30 and counter.value > during_end  # workers wrote before and after
    assert result.rows_changed == 5
    # Nothing lost: the final state is exactly the rebuilt state.
    assert findings(shop_spec(backend), backend, tmp_path, "after") == set()


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

    second = subprocess.run(command, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()
    assert b"resuming: 2 of 5 batch(es) already committed" in second.stderr
    assert findings(spec, backend, tmp_path, "after") == set()
    with backend.engine.connect() as conn:
        log = conn.execute(sa.text("SELECT outcome, rows_changed FROM drift_remediation_log"))
        assert tuple(log.one()) == ("applied", 5)
