"""``drift demo``: a small shop whose workers raced, audited end to end.

The shop keeps current state (``inventory``, ``orders``) beside the facts that
explain it (``stock_events``, ``order_events``), a job log (``job_runs``) and an
outbox. Simulated workers run the shop's jobs; each job is a generator that
yields between its steps, and a fixed schedule interleaves the steps of
concurrent jobs, so the races are reproduced exactly, every time:

* a lost update: two ``ship_stock`` runs read the same count and both write back;
* a double apply: ``receive_stock`` commits, dies before it is marked done, and
  its retry applies the quantity again (the event insert is idempotent);
* a stale overwrite: a slow ``mark_paid`` writes ``paid`` over a newer ``shipped``;
* a missing outbox write: a stock event whose outbox message was never written;
* an orphan row (an inventory row no event explains) and a missing row (an
  order whose row was never inserted).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

inventory = sa.Table(
    "inventory",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.String(32)),
)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32)),
)
stock_events = sa.Table(
    "stock_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("job_run_id", sa.Integer),
    sa.Column("idempotency_key", sa.String(64), unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
)
order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("order_id", sa.Integer, nullable=False),
    sa.Column("new_status", sa.String(32), nullable=False),
    sa.Column("job_run_id", sa.Integer),
    sa.Column("created_at", sa.String(32), nullable=False),
)
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_name", sa.String(64), nullable=False),
    sa.Column("sku", sa.String(64)),
    sa.Column("order_id", sa.Integer),
    sa.Column("worker", sa.String(32)),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
)
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("aggregate_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("published_at", sa.String(32)),
)

CORE_SPEC = """\
# drift spec for the demo shop: how each audited column is rebuilt.
version = 1

[database]
url = "sqlite:///shop.db"

[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]
time = "created_at"
run_id = "job_run_id"

[streams.order_events]
table = "order_events"
key = ["order_id"]
order_by = ["id"]
time = "created_at"
run_id = "job_run_id"

[entities.inventory]
table = "inventory"
key = ["sku"]

[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "CASE WHEN kind = 'received' THEN qty WHEN kind = 'shipped' THEN -qty ELSE 0 END"

[entities.orders]
table = "orders"
key = ["order_id"]

[entities.orders.columns.status]
stream = "order_events"
fold = "last"
value = "new_status"
"""

# The witnesses: who ran what, when, and the outbox. SPEC is the demo's whole spec;
# CORE_SPEC alone audits the same state without attribution.
SPEC = (
    CORE_SPEC
    + """
# The witnesses: who ran what, when (a run with a NULL key touches no row).
[job_logs.stock_jobs]
table = "job_runs"
entity = "inventory"
key = ["sku"]
id = "id"
name = "job_name"
worker = "worker"
attempt = "attempt"
status = "status"
started_at = "started_at"
finished_at = "finished_at"

[job_logs.order_jobs]
table = "job_runs"
entity = "orders"
key = ["order_id"]
id = "id"
name = "job_name"
worker = "worker"
attempt = "attempt"
status = "status"
started_at = "started_at"
finished_at = "finished_at"

[outboxes.stock]
table = "outbox"
entity = "inventory"
key = ["aggregate_id"]
id = "id"
stream = "stock"
announces = "event_id"
type = "event_type"
payload = "payload"
created_at = "created_at"
published_at = "published_at"
"""
)

BASE_TIME = dt.datetime(2026, 3, 14, 9, 0, 0, tzinfo=dt.UTC)


@dataclass
class Clock:
    """A deterministic clock: each tick is one second."""

    now: dt.datetime = BASE_TIME

    def tick(self, seconds: int = 1) -> str:
        self.now += dt.timedelta(seconds=seconds)
        return self.stamp()

    def stamp(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Shop:
    """The shop's data access, as its (buggy and correct) jobs use it."""

    conn: Connection
    clock: Clock = field(default_factory=Clock)

    def start_run(
        self,
        job: str,
        worker: str,
        attempt: int = 1,
        *,
        sku: str | None = None,
        order_id: int | None = None,
    ) -> int:
        result = self.conn.execute(
            job_runs.insert().values(
                job_name=job,
                sku=sku,
                order_id=order_id,
                worker=worker,
                attempt=attempt,
                status="running",
                started_at=self.clock.tick(),
            )
        )
        return _new_id(result)

    def finish_run(self, run_id: int, status: str = "succeeded") -> None:
        self.conn.execute(
            job_runs.update()
            .where(job_runs.c.id == run_id)
            .values(status=status, finished_at=self.clock.tick())
        )

    def on_hand(self, sku: str) -> int:
        return int(
            self.conn.execute(
                sa.select(inventory.c.on_hand).where(inventory.c.sku == sku)
            ).scalar_one()
        )

    def set_on_hand(self, sku: str, value: int) -> None:
        self.conn.execute(
            inventory.update()
            .where(inventory.c.sku == sku)
            .values(on_hand=value, updated_at=self.clock.tick())
        )

    def stock_event(
        self,
        sku: str,
        kind: str,
        qty: int,
        run_id: int | None,
        *,
        idempotency_key: str | None = None,
        announce: bool = True,
    ) -> int | None:
        if (
            idempotency_key is not None
            and self.conn.execute(
                sa.select(stock_events.c.id).where(
                    stock_events.c.idempotency_key == idempotency_key
                )
            ).first()
        ):
            return None
        at = self.clock.tick()
        event_id = _new_id(
            self.conn.execute(
                stock_events.insert().values(
                    sku=sku,
                    kind=kind,
                    qty=qty,
                    job_run_id=run_id,
                    idempotency_key=idempotency_key,
                    created_at=at,
                )
            )
        )
        if announce:
            self.conn.execute(
                outbox.insert().values(
                    aggregate_id=sku,
                    event_id=event_id,
                    event_type=f"stock.{kind}",
                    payload=json.dumps({"sku": sku, "kind": kind, "qty": qty}),
                    created_at=at,
                    published_at=self.clock.tick(),
                )
            )
        return event_id

    def order_event(self, order_id: int, status: str, run_id: int | None) -> None:
        self.conn.execute(
            order_events.insert().values(
                order_id=order_id,
                new_status=status,
                job_run_id=run_id,
                created_at=self.clock.tick(),
            )
        )

    def status(self, order_id: int) -> str:
        return str(
            self.conn.execute(
                sa.select(orders.c.status).where(orders.c.order_id == order_id)
            ).scalar_one()
        )

    def set_status(self, order_id: int, status: str) -> None:
        self.conn.execute(
            orders.update()
            .where(orders.c.order_id == order_id)
            .values(status=status, updated_at=self.clock.tick())
        )


Job = Iterator[None]


def _new_id(result: sa.CursorResult[Any]) -> int:
    """The primary key an INSERT generated."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def ship_stock(shop: Shop, worker: str, sku: str, qty: int) -> Job:
    """The racy job: read, compute, write back, with no lock between."""
    run = shop.start_run("ship_stock", worker, sku=sku)
    count = shop.on_hand(sku)
    yield
    shop.set_on_hand(sku, count - qty)
    shop.stock_event(sku, "shipped", qty, run)
    shop.finish_run(run)


def receive_stock(
    shop: Shop,
    worker: str,
    sku: str,
    qty: int,
    delivery: str,
    attempt: int = 1,
    crash_before_done: bool = False,
) -> Job:
    """Applies a delivery; the event is idempotent, the counter update is not."""
    run = shop.start_run("receive_stock", worker, attempt, sku=sku)
    shop.set_on_hand(sku, shop.on_hand(sku) + qty)
    shop.stock_event(sku, "received", qty, run, idempotency_key=delivery)
    yield
    shop.finish_run(run, "failed" if crash_before_done else "succeeded")


def set_order_status(shop: Shop, worker: str, job: str, order_id: int, status: str) -> Job:
    """Records the event, then (slowly) writes the status."""
    run = shop.start_run(job, worker, order_id=order_id)
    shop.order_event(order_id, status, run)
    yield
    shop.set_status(order_id, status)
    shop.finish_run(run)


def interleave(jobs: list[Job], schedule: str) -> None:
    """Run jobs step by step: schedule "ABAB" steps job A, then B, then A...

    Every job then runs to its end in order.
    """
    for letter in schedule:
        next(jobs[ord(letter) - ord("A")], None)
    for job in jobs:
        for _ in job:
            pass


@dataclass(frozen=True)
class DemoDatabase:
    folder: Path
    database: Path
    spec: Path
    races: dict[str, str]


def build_shop(
    conn: Connection, seed: int = 7, skus: int = 24, order_count: int = 40
) -> dict[str, str]:
    """Fill an empty shop schema with correct traffic and the four races.

    Returns what was broken, by key (for the demo's own explanation).
    """
    rng = random.Random(seed)
    shop = Shop(conn)
    names = [f"SKU-{i:03d}" for i in range(1, skus + 1)]
    for sku in names:
        conn.execute(inventory.insert().values(sku=sku, on_hand=0, updated_at=shop.clock.stamp()))
        interleave([receive_stock(shop, "w1", sku, rng.randint(20, 60), f"init-{sku}")], "")
    for order_id in range(1001, 1001 + order_count):
        conn.execute(
            orders.insert().values(order_id=order_id, status="new", updated_at=shop.clock.stamp())
        )
        shop.order_event(order_id, "new", None)
    # Correct traffic: jobs that do not overlap.
    for _ in range(60):
        sku = rng.choice(names)
        worker = rng.choice(["w1", "w2", "w3"])
        if rng.random() < 0.6:
            interleave([ship_stock(shop, worker, sku, rng.randint(1, 5))], "")
        else:
            delivery = f"po-{rng.randrange(10**6):06d}"
            interleave([receive_stock(shop, worker, sku, rng.randint(5, 20), delivery)], "")
    for order_id in range(1001, 1001 + order_count, 2):
        interleave([set_order_status(shop, "w2", "mark_paid", order_id, "paid")], "")

    races: dict[str, str] = {}
    lost, doubled, stale, unannounced = names[2], names[5], 1004, names[8]
    # Lost update: two ship_stock runs read the same count and both write back.
    interleave([ship_stock(shop, "w1", lost, 3), ship_stock(shop, "w2", lost, 2)], "AB")
    races[lost] = "lost update: two overlapping ship_stock runs; one decrement was lost"
    # Double apply: the first attempt commits, dies before it is marked done, is retried.
    interleave([receive_stock(shop, "w3", doubled, 12, "po-retry", 1, crash_before_done=True)], "")
    interleave([receive_stock(shop, "w1", doubled, 12, "po-retry", 2)], "")
    races[doubled] = "double apply: receive_stock retried after its first attempt had committed"
    # Stale overwrite: a slow mark_paid writes 'paid' after a newer 'shipped'.
    interleave(
        [
            set_order_status(shop, "w2", "mark_paid", stale, "paid"),
            set_order_status(shop, "w3", "mark_shipped", stale, "shipped"),
        ],
        "ABB",
    )
    races[str(stale)] = "stale overwrite: a slow mark_paid wrote 'paid' over 'shipped'"
    # Missing outbox write: the worker crashed between the event and its message.
    run = shop.start_run("ship_stock", "w2", sku=unannounced)
    shop.set_on_hand(unannounced, shop.on_hand(unannounced) - 1)
    shop.stock_event(unannounced, "shipped", 1, run, announce=False)
    shop.finish_run(run)
    races[unannounced] = "missing outbox write: a stock event with no outbox message"
    # An orphan row and a missing row.
    conn.execute(
        inventory.insert().values(sku="SKU-GHOST", on_hand=5, updated_at=shop.clock.tick())
    )
    races["SKU-GHOST"] = "orphan row: an inventory row that no stock event explains"
    missing = 1001 + order_count
    shop.order_event(missing, "new", None)
    races[str(missing)] = "missing row: order events for an order whose row was never inserted"
    return races


def build_demo(folder: str | Path, seed: int = 7) -> DemoDatabase:
    """Create (or recreate) the demo shop database and its spec in ``folder``."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "shop.db"
    spec = folder / "drift.toml"
    for stale_file in (database, Path(f"{database}-journal"), Path(f"{database}-wal")):
        stale_file.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            races = build_shop(conn, seed)
    finally:
        engine.dispose()
    spec.write_text(SPEC, encoding="utf-8")
    return DemoDatabase(folder=folder, database=database, spec=spec, races=races)
