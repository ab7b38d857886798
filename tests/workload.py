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
                    conn.execute(
                        demo.stock_events.insert().values(
                            sku=sku, kind=kind, qty=qty, created_at=now
                        )
                    )
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
