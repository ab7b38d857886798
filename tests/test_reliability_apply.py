"""Apply under real traffic, racing applies, SIGKILL at random points, dropped connections.

Workers are real processes with their own connections; each keeps its own tally
of what it committed (the ground truth, never drift's word). The demo shop's
plan has five automatic actions: delta on SKU-003 and SKU-006, a delete of
SKU-GHOST, a cas on order 1004 and an insert of order 1041.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from audit import run_audit
from audit.errors import DatabaseError, GuardFailedError
from drift import demo
from remediate.apply import apply_plan
from remediate.approval import approve
from remediate.plan import PlanOptions, build_plan, load_plan, write_plan
from tests.reliability import scaled
from tests.remediation_helpers import audited_shop, findings, shop_spec, table_state

pytestmark = pytest.mark.slow

FIXED = ["SKU-003", "SKU-006"]  # the plan's delta (or cas) targets
CALM = ["SKU-001", "SKU-002"]


# --------------------------------------------------------------------------- workers


def _tally_worker(url: str, seed: int, skus: list[str], stop, commits, tally) -> None:  # type: ignore[no-untyped-def]
    """A correct worker: a stock row and its event in one transaction; tallies its commits."""
    engine = sa.create_engine(url)
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            index = rng.randrange(len(skus))
            qty = rng.randint(1, 5)
            for _attempt in range(50):
                try:
                    with engine.begin() as conn:
                        conn.execute(
                            sa.text("UPDATE inventory SET on_hand = on_hand + :q WHERE sku = :s"),
                            {"q": qty, "s": skus[index]},
                        )
                        conn.execute(
                            sa.text(
                                "INSERT INTO stock_events (sku, kind, qty, created_at) "
                                "VALUES (:s, 'received', :q, '2026-03-15T00:00:00Z')"
                            ),
                            {"q": qty, "s": skus[index]},
                        )
                except sa.exc.OperationalError:  # lock wait or deadlock: retry, as workers do
                    time.sleep(0.01)
                    continue
                with tally.get_lock():
                    tally[index] += qty
                with commits.get_lock():
                    commits.value += 1
                break
            time.sleep(0.002)
    finally:
        engine.dispose()


class Traffic:
    """N tally workers on ``skus``; the tallies are what they committed."""

    def __init__(self, url: str, skus: list[str], n: int = 3) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.skus = skus
        self.stop = ctx.Event()
        self.commits = ctx.Value("i", 0)
        self.tally = ctx.Array("i", len(skus))
        self.procs = [
            ctx.Process(
                target=_tally_worker,
                args=(url, seed, skus, self.stop, self.commits, self.tally),
                daemon=True,
            )
            for seed in range(n)
        ]

    def __enter__(self) -> Traffic:
        for p in self.procs:
            p.start()
        self.wait(10)
        return self

    def wait(self, more: int, timeout: float = 60) -> None:
        target = self.commits.value + more
        deadline = time.monotonic() + timeout
        while self.commits.value < target:
            assert time.monotonic() < deadline, f"workers made only {self.commits.value} commits"
            assert all(p.is_alive() for p in self.procs), "a worker died"
            time.sleep(0.02)

    def totals(self) -> dict[str, int]:
        return dict(zip(self.skus, self.tally[:]))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(30)
        assert all(p.exitcode == 0 for p in self.procs), [p.exitcode for p in self.procs]


def _on_hand(backend) -> dict[str, int]:
    with backend.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT sku, on_hand FROM inventory")).all())


def _max_event(engine: sa.Engine, skus: list[str]) -> int:
    with engine.connect() as conn:
        query = sa.text("SELECT COALESCE(MAX(id), 0) FROM stock_events WHERE sku IN :s")
        query = query.bindparams(sa.bindparam("s", expanding=True))
        return int(conn.execute(query, {"s": skus}).scalar_one())


def _log_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("drift_remediation_log"):
            return 0
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM drift_remediation_log")).scalar())


class InTransaction:
    """A progress callback that holds apply inside its open transaction until workers
    have committed writes to the rows it is about to fix (checked from another session)."""

    def __init__(self, backend, skus: list[str]) -> None:
        self.engine = sa.create_engine(backend.url)
        self.skus = skus
        self.landed = 0
        self.uncommitted_log = None

    def __call__(self, message: str) -> None:
        if not message.startswith("applying "):
            return
        # The log row is inserted but not committed: the transaction is open.
        self.uncommitted_log = _log_rows(self.engine)
        start = _max_event(self.engine, self.skus)
        deadline = time.monotonic() + 30
        while _max_event(self.engine, self.skus) == start:
            assert time.monotonic() < deadline, "no worker wrote the fixed rows during apply"
            time.sleep(0.02)
        with self.engine.connect() as conn:
            query = sa.text("SELECT COUNT(*) FROM stock_events WHERE id > :m AND sku IN :s")
            query = query.bindparams(sa.bindparam("s", expanding=True))
            self.landed = int(conn.execute(query, {"m": start, "s": self.skus}).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- apply under traffic


@pytest.mark.scenario("apply under traffic (delta): no concurrent write lost")
def test_delta_apply_while_workers_write_the_same_rows(server_backend, tmp_path, scenario_runs):
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    plan = load_plan(audit)
    rebuilt = {json.loads(a.key)[0]: a.after for a in plan.actions if a.column == "on_hand"}
    start = _on_hand(backend)
    skus = FIXED + CALM
    hold = InTransaction(backend, FIXED)
    try:
        with Traffic(backend.url, skus) as traffic:
            result = apply_plan(audit, backend.url, lock_timeout=10, progress=hold)
            traffic.wait(10)
        totals = traffic.totals()
    finally:
        hold.close()
    assert hold.uncommitted_log == 0  # the workers committed while apply's transaction was open
    assert hold.landed >= 1
    assert result.rows_changed == 5
    final = _on_hand(backend)
    for sku in FIXED:  # the correction, plus every write the workers say they committed
        assert final[sku] == rebuilt[sku] + totals[sku], sku
    for sku in CALM:
        assert final[sku] == start[sku] + totals[sku], sku
    assert findings(shop_spec(backend), backend, tmp_path, "after") == set()
    scenario_runs.run(f"{hold.landed} worker commit(s) on fixed rows inside apply's transaction")


@pytest.mark.scenario("apply under traffic (cas): a missed guard aborts, re-plan finishes")
def test_cas_apply_aborts_cleanly_then_replan_finishes(server_backend, tmp_path, scenario_runs):
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    write_plan(audit, build_plan(audit, PlanOptions(all_cas=True, delete_orphans=True)))
    approve(audit, "alice")
    start = _on_hand(backend)
    others = table_state(backend, "orders")
    hold = InTransaction(backend, FIXED)
    try:
        with Traffic(backend.url, FIXED + CALM) as traffic, pytest.raises(GuardFailedError) as info:
            apply_plan(audit, backend.url, lock_timeout=10, progress=hold)
        totals = traffic.totals()
    finally:
        hold.close()
    message = str(info.value)
    assert "\n" not in message and message.endswith("nothing was applied")
    assert "the value changed since the audit" in message
    assert hold.landed >= 1
    # Nothing was applied: only the workers' own writes are in the tables.
    assert _log_rows(backend.engine) == 0
    assert table_state(backend, "orders") == others
    final = _on_hand(backend)
    assert all(final[s] == start[s] + totals.get(s, 0) for s in start)

    # Re-audit and re-plan while workers keep writing other rows: the job gets done.
    spec = shop_spec(backend)
    second = tmp_path / "again"
    before = _on_hand(backend)
    with Traffic(backend.url, CALM) as traffic:
        run_audit(spec, out=second, write_report=False)
        write_plan(second, build_plan(second, PlanOptions(all_cas=True, delete_orphans=True)))
        approve(second, "alice")
        result = apply_plan(second, backend.url, lock_timeout=10)
        traffic.wait(5)
    assert result.rows_changed == 5
    assert findings(spec, backend, tmp_path, "after") == set()
    final = _on_hand(backend)
    for sku in CALM:
        assert final[sku] == before[sku] + traffic.totals()[sku]
    scenario_runs.run()


# --------------------------------------------------------------------------- racing applies


def _apply_at_once(plan: str, url: str, barrier, queue) -> None:  # type: ignore[no-untyped-def]
    from audit.errors import DriftError

    barrier.wait(60)
    try:
        result = apply_plan(plan, url, lock_timeout=10)
    except DriftError as exc:
        queue.put(("refused", str(exc)))
        return
    queue.put(("applied", result.rows_changed))


@pytest.mark.scenario("same plan applied by 3 processes at once: exactly one applies")
def test_concurrent_applies_of_one_plan(backend, tmp_path, scenario_runs):
    spec = shop_spec(backend)
    outcomes: list[tuple[str, object]] = []
    for round_ in range(scaled(2)):
        if round_:
            with backend.engine.begin() as conn:
                demo.metadata.drop_all(conn)
        audit = audited_shop(backend, tmp_path / f"r{round_}")
        approve(audit, "alice")
        ctx = multiprocessing.get_context("spawn")
        barrier, queue = ctx.Barrier(3), ctx.Queue()
        procs = [
            ctx.Process(target=_apply_at_once, args=(str(audit), backend.url, barrier, queue))
            for _ in range(3)
        ]
        for p in procs:
            p.start()
        got = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert [kind for kind, _ in got].count("applied") == 1, got
        assert ("applied", 5) in got
        for kind, message in got:
            if kind == "refused":
                assert message == "refused: another drift apply is running on this database" or (
                    "was already applied" in str(message)
                ), message
        outcomes.extend(got)
        # Applied once: a second delta would have made new drift.
        assert findings(spec, backend, tmp_path / f"r{round_}", "after") == set()
        with backend.engine.connect() as conn:
            plan_id = load_plan(audit).plan_id
            rows = conn.execute(
                sa.text("SELECT COUNT(*) FROM drift_remediation_rows WHERE plan_id = :p"),
                {"p": plan_id},
            ).scalar()
        assert rows == 5
        scenario_runs.run()
    busy = sum(1 for k, m in outcomes if k == "refused" and "another" in str(m))
    scenario_runs.notes.append(f"{busy} refusal(s) by the lock, the rest as already applied")


# --------------------------------------------------------------------------- SIGKILL


def _drifted_shop(backend, folder: Path) -> Path:
    """The demo shop with every SKU drifted too: 29 automatic actions."""
    with backend.engine.begin() as conn:
        demo.metadata.drop_all(conn)
        for name in (
            "drift_remediation_log",
            "drift_remediation_batches",
            "drift_remediation_rows",
        ):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
        conn.execute(sa.text("UPDATE inventory SET on_hand = on_hand + 1 WHERE sku <> 'SKU-GHOST'"))
    out = folder / "audit"
    run_audit(shop_spec(backend), out=out, write_report=False)
    write_plan(out, build_plan(out, PlanOptions(delete_orphans=True)))
    approve(out, "alice")
    return out


def _current(backend, action) -> object:
    """The value an action changes, as it is now (the row's presence for row actions)."""
    key = json.loads(action.key)[0]
    with backend.engine.connect() as conn:
        if action.entity == "inventory":
            value = conn.execute(
                sa.text("SELECT on_hand FROM inventory WHERE sku = :k"), {"k": key}
            ).scalar()
        else:
            value = conn.execute(
                sa.text("SELECT status FROM orders WHERE order_id = :k"), {"k": key}
            ).scalar()
    if action.mode in ("insert", "delete"):
        return value is not None
    return value


@pytest.mark.scenario("SIGKILL at random points of a batched apply; resume completes")
def test_sigkill_at_random_points_then_resume(backend, tmp_path, scenario_runs):
    rng = random.Random(int(os.environ.get("DRIFT_RELIABILITY_SEED", "0")) or None)
    spec = shop_spec(backend)
    for run in range(scaled(2)):
        audit = _drifted_shop(backend, tmp_path / f"run{run}")
        plan = load_plan(audit)
        automatic = plan.automatic()
        size = rng.choice([1, 2, 3])
        total = -(-len(automatic) // size)
        kill_after = rng.randint(1, total - 1)
        delay = rng.uniform(0, 0.06)
        command = [sys.executable, "-m", "drift", "apply", str(audit), "--db", backend.url]
        command += ["--batch-size", str(size)]
        # The pause after each batch outlasts most of the kill delay: the kill lands between
        # batches or inside the next one's transaction, never after the last batch (a
        # finished apply leaves nothing to resume).
        env = dict(os.environ, DRIFT_TEST_PAUSE_AFTER_BATCH="0.05")
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            for raw in proc.stderr:
                if f"batch {kill_after}/{total} committed" in raw.decode():
                    break
            time.sleep(delay)  # lands between batches or inside the next one's transaction
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        with backend.engine.connect() as conn:
            committed = sorted(
                conn.execute(sa.text("SELECT batch_no FROM drift_remediation_batches")).scalars()
            )
            per_batch = dict(
                conn.execute(
                    sa.text("SELECT batch_no, rows_changed FROM drift_remediation_batches")
                ).all()
            )
            rows = conn.execute(
                sa.text("SELECT action_id, batch_no FROM drift_remediation_rows")
            ).all()
        done = len(committed)
        assert committed == list(range(1, done + 1)) and done >= kill_after
        # Whole batches only: exactly the actions of the committed batches, each recorded.
        expected_ids = {a.id for a in automatic[: done * size]}
        assert {r.action_id for r in rows} == expected_ids
        for number in committed:
            assert per_batch[number] == sum(1 for r in rows if r.batch_no == number)
        # The rows agree with the history: after for applied actions, before for the rest.
        for action in automatic:
            now = _current(backend, action)
            if action.id in expected_ids:
                want = (
                    action.mode == "insert" if action.mode in ("insert", "delete") else action.after
                )
            else:
                want = (
                    action.mode == "delete"
                    if action.mode in ("insert", "delete")
                    else action.before
                )
            assert now == want, (action.id, action.mode, now, want)
        second = subprocess.run(command, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stderr.decode()
        if done < total:
            assert f"resuming: {done} of {total} batch(es)".encode() in second.stderr
        assert findings(spec, backend, tmp_path / f"run{run}", "after") == set()
        with backend.engine.connect() as conn:
            log = conn.execute(sa.text("SELECT outcome, rows_changed FROM drift_remediation_log"))
            assert tuple(log.one()) == ("applied", len(automatic))
        scenario_runs.run(
            f"batch size {size}: killed after batch {kill_after}/{total}, {done} kept"
        )


# --------------------------------------------------------------------------- dropped connections


def _kill_sessions(backend, application_name: str) -> int:
    from tests.test_faults import _kill_audit_connections

    return _kill_audit_connections(backend, application_name)


@pytest.mark.scenario("connection dropped mid-apply: one-line error, whole batches, retry works")
@pytest.mark.parametrize("batched", [False, True], ids=["one-transaction", "batched"])
def test_connection_dropped_mid_apply(server_backend, tmp_path, batched, scenario_runs):
    backend = server_backend
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    backend.engine.dispose()
    name = f"drift-{uuid.uuid4().hex[:8]}"
    url = make_url(backend.url)
    if backend.name == "postgresql":
        url = url.update_query_dict({"application_name": name})
    url_text = url.render_as_string(hide_password=False)
    before = table_state(backend, "inventory", "orders")
    backend.engine.dispose()
    killed: list[int] = []
    trigger = "batch 2/5 committed" if batched else "applying "

    def progress(message: str) -> None:
        if message.startswith(trigger) and not killed:
            thread = threading.Thread(target=lambda: killed.append(_kill_sessions(backend, name)))
            thread.start()
            thread.join()

    with pytest.raises(DatabaseError) as info:
        apply_plan(audit, url_text, batch_size=1 if batched else None, progress=progress)
    assert killed and killed[0] >= 1
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    with backend.engine.connect() as conn:
        if batched:
            batches = conn.execute(sa.text("SELECT batch_no FROM drift_remediation_batches"))
            assert sorted(batches.scalars()) == [1, 2]
            rows = conn.execute(sa.text("SELECT action_id FROM drift_remediation_rows"))
            assert sorted(rows.scalars()) == [1, 2]
        else:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM drift_remediation_log")).scalar() == 0
    if not batched:
        assert table_state(backend, "inventory", "orders") == before
    retry = apply_plan(audit, backend.url, batch_size=1 if batched else None)
    assert retry.batches_skipped == (2 if batched else 0)
    assert findings(shop_spec(backend), backend, tmp_path, "after") == set()
    scenario_runs.run()
