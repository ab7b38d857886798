"""Real worker processes for concurrency tests, against the demo shop schema.

Workers are plain functions run in separate processes (multiprocessing, spawn).
Correct workers change a row and append the fact that explains it in one
transaction, so they never create drift. Ground truth is what the workers
record themselves, never what drift says.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections.abc import Sequence

import sqlalchemy as sa

from drift import demo


def announce(
    conn: sa.Connection, sku: str, kind: str, qty: int, now: str, idempotency_key: str | None = None
) -> None:
    """A stock event and its outbox message, in the caller's transaction (as the shop does)."""
    event_id = conn.execute(
        demo.stock_events.insert().values(
            sku=sku, kind=kind, qty=qty, idempotency_key=idempotency_key, created_at=now
        )
    ).inserted_primary_key[0]
    conn.execute(
        demo.outbox.insert().values(
            aggregate_id=sku,
            event_id=event_id,
            event_type=f"stock.{kind}",
            payload="{}",
            created_at=now,
            published_at=now,
        )
    )


def correct_worker(
    url: str,
    seed: int,
    stop,
    skus: Sequence[str],
    orders: Sequence[int],
    new_order_base: int,
    counter,
) -> None:
    """Atomic updates with their events in the same transaction, until stopped."""
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    next_order = new_order_base
    try:
        while not stop.is_set():
            choice = rng.random()
            with engine.begin() as conn:
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if choice < 0.6:
                    sku = rng.choice(skus)
                    qty = rng.randint(1, 9)
                    kind = rng.choice(["received", "shipped"])
                    sign = 1 if kind == "received" else -1
                    conn.execute(
                        demo.inventory.update()
                        .where(demo.inventory.c.sku == sku)
                        .values(on_hand=demo.inventory.c.on_hand + sign * qty, updated_at=now)
                    )
                    announce(conn, sku, kind, qty, now)
                elif choice < 0.85 and orders:
                    order_id = rng.choice(orders)
                    status = rng.choice(["paid", "packed", "shipped"])
                    conn.execute(
                        demo.orders.update()
                        .where(demo.orders.c.order_id == order_id)
                        .values(status=status, updated_at=now)
                    )
                    conn.execute(
                        demo.order_events.insert().values(
                            order_id=order_id, new_status=status, created_at=now
                        )
                    )
                else:
                    conn.execute(
                        demo.orders.insert().values(
                            order_id=next_order, status="new", updated_at=now
                        )
                    )
                    conn.execute(
                        demo.order_events.insert().values(
                            order_id=next_order, new_status="new", created_at=now
                        )
                    )
                    next_order += 1
            with counter.get_lock():
                counter.value += 1
    finally:
        engine.dispose()


class Workers:
    """Start N correct workers; stop and join them on exit."""

    def __init__(self, url: str, n: int, skus: Sequence[str], orders: Sequence[int]) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.counter = ctx.Value("i", 0)
        self.procs = [
            ctx.Process(
                target=correct_worker,
                args=(
                    url,
                    i,
                    self.stop,
                    list(skus),
                    list(orders),
                    100_000 + i * 10_000,
                    self.counter,
                ),
                daemon=True,
            )
            for i in range(n)
        ]

    def __enter__(self) -> Workers:
        for p in self.procs:
            p.start()
        return self

    def commits(self) -> int:
        return int(self.counter.value)

    def wait_for(self, commits: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.commits() < commits:
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers made only {self.commits()} commits")
            if not all(p.is_alive() for p in self.procs):
                raise RuntimeError("a worker died")
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=30)
        if any(p.exitcode != 0 for p in self.procs):
            raise RuntimeError(f"worker exit codes {[p.exitcode for p in self.procs]}")


def racy_worker(
    url: str, seed: int, skus: Sequence[str], orders: Sequence[int], iterations: int, barrier
) -> None:
    """The buggy jobs: read-modify-write without a lock, re-applying retries, stale writes.

    Every job still appends its event correctly, so the events are the truth and
    the current tables drift wherever two jobs raced.
    """
    rng = random.Random(seed)
    engine = sa.create_engine(url)
    if barrier is not None:
        barrier.wait()
    try:
        for i in range(iterations):
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            choice = rng.random()
            if choice < 0.6:
                sku = rng.choice(skus)
                qty = rng.randint(1, 9)
                kind = rng.choice(["received", "shipped"])
                sign = 1 if kind == "received" else -1
                with engine.begin() as conn:  # read...
                    count = conn.execute(
                        sa.select(demo.inventory.c.on_hand).where(demo.inventory.c.sku == sku)
                    ).scalar_one()
                time.sleep(rng.random() * 0.004)  # ...think...
                with engine.begin() as conn:  # ...write back, with the event
                    conn.execute(
                        demo.inventory.update()
                        .where(demo.inventory.c.sku == sku)
                        .values(on_hand=count + sign * qty, updated_at=now)
                    )
                    announce(conn, sku, kind, qty, now)
            elif choice < 0.75:
                # A retry that re-applies: the first attempt committed; the event is
                # idempotent, the counter update is not.
                sku = rng.choice(skus)
                qty = rng.randint(1, 9)
                key = f"delivery-{seed}-{i}"
                for _attempt in (1, 2):
                    with engine.begin() as conn:
                        conn.execute(
                            demo.inventory.update()
                            .where(demo.inventory.c.sku == sku)
                            .values(on_hand=demo.inventory.c.on_hand + qty)
                        )
                        exists = conn.execute(
                            sa.select(demo.stock_events.c.id).where(
                                demo.stock_events.c.idempotency_key == key
                            )
                        ).first()
                        if exists is None:
                            announce(conn, sku, "received", qty, now, idempotency_key=key)
            else:
                # Stale overwrite: record the event, then write the status late.
                order_id = rng.choice(orders)
                status = rng.choice(["paid", "packed", "shipped", "delivered"])
                with engine.begin() as conn:
                    conn.execute(
                        demo.order_events.insert().values(
                            order_id=order_id, new_status=status, created_at=now
                        )
                    )
                time.sleep(rng.random() * 0.004)
                with engine.begin() as conn:
                    conn.execute(
                        demo.orders.update()
                        .where(demo.orders.c.order_id == order_id)
                        .values(status=status, updated_at=now)
                    )
    finally:
        engine.dispose()


def run_racy_workers(
    url: str, n: int, skus: Sequence[str], orders: Sequence[int], iterations: int, seed: int = 0
) -> None:
    """Run n racy workers to completion, started together."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [
        ctx.Process(
            target=racy_worker,
            args=(url, seed * 1000 + i, list(skus), list(orders), iterations, barrier),
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"racy worker exit codes {[p.exitcode for p in procs]}")


def ground_truth(engine: sa.Engine) -> set[tuple]:
    """(entity, key JSON, column, kind, expected, actual) from a plain Python fold."""
    import json
    from decimal import Decimal

    with engine.connect() as conn:
        stock = conn.execute(
            sa.select(demo.stock_events.c.sku, demo.stock_events.c.kind, demo.stock_events.c.qty)
        ).all()
        status_events = conn.execute(
            sa.select(demo.order_events.c.order_id, demo.order_events.c.new_status).order_by(
                demo.order_events.c.id
            )
        ).all()
        on_hand = dict(
            conn.execute(sa.select(demo.inventory.c.sku, demo.inventory.c.on_hand)).all()
        )
        status = dict(conn.execute(sa.select(demo.orders.c.order_id, demo.orders.c.status)).all())
        announced = set(conn.execute(sa.select(demo.outbox.c.event_id)).scalars())
        events = conn.execute(sa.select(demo.stock_events.c.id, demo.stock_events.c.sku)).all()
    expected_stock: dict[str, int] = {}
    for sku, kind, qty in stock:
        expected_stock[sku] = expected_stock.get(sku, 0) + (
            qty if kind == "received" else -qty if kind == "shipped" else 0
        )
    expected_status: dict[int, str] = {}
    for order_id, new_status in status_events:
        expected_status[order_id] = new_status
    truth = set()
    for sku, value in expected_stock.items():
        if sku not in on_hand:
            truth.add(
                (
                    "inventory",
                    json.dumps([sku]),
                    None,
                    "missing_row",
                    json.dumps({"on_hand": value}),
                    None,
                )
            )
        elif Decimal(on_hand[sku]) != Decimal(value):
            truth.add(
                (
                    "inventory",
                    json.dumps([sku]),
                    "on_hand",
                    "mismatch",
                    str(value),
                    str(on_hand[sku]),
                )
            )
    for sku, value in on_hand.items():
        if sku not in expected_stock:
            truth.add(
                (
                    "inventory",
                    json.dumps([sku]),
                    None,
                    "orphan_row",
                    None,
                    json.dumps({"on_hand": value}),
                )
            )
    for order_id, value in expected_status.items():
        if order_id not in status:
            truth.add(
                (
                    "orders",
                    json.dumps([order_id]),
                    None,
                    "missing_row",
                    json.dumps({"status": value}),
                    None,
                )
            )
        elif status[order_id] != value:
            truth.add(
                (
                    "orders",
                    json.dumps([order_id]),
                    "status",
                    "mismatch",
                    json.dumps(value),
                    json.dumps(status[order_id]),
                )
            )
    for order_id, value in status.items():
        if order_id not in expected_status:
            truth.add(
                (
                    "orders",
                    json.dumps([order_id]),
                    None,
                    "orphan_row",
                    None,
                    json.dumps({"status": value}),
                )
            )
    for event_id, sku in events:  # the outbox check: events no message announces
        if event_id not in announced:
            truth.add(("inventory", json.dumps([sku]), None, "unannounced_event", None, event_id))
    return truth
