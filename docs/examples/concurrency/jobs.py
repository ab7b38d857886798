"""The demo shop's ship_stock job, racy and fixed, for a concurrent drift test.

Each job is ``job(url, worker, iteration)``: it ships one unit of SKU-1 and
logs its run in job_runs, as the application's worker would.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from drift.demo import inventory, job_runs, metadata, stock_events

SKU = "SKU-1"
_engines: dict[str, sa.Engine] = {}


def engine(url: str) -> sa.Engine:
    if url not in _engines:
        _engines[url] = sa.create_engine(
            url, connect_args={"timeout": 30} if url.startswith("sqlite") else {}
        )
    return _engines[url]


def setup(url: str) -> None:
    """The shop's tables, with 1000 units of SKU-1 received."""
    with engine(url).begin() as conn:
        metadata.create_all(conn)
        conn.execute(inventory.insert().values(sku=SKU, on_hand=1000))
        conn.execute(
            stock_events.insert().values(sku=SKU, kind="received", qty=1000, created_at=_now())
        )


def ship_racy(url: str, worker: int, iteration: int) -> None:
    """Reads the count, then writes count - 1: two workers can read the same count."""
    run = _start(url, worker)
    with engine(url).begin() as conn:
        count = conn.execute(
            sa.select(inventory.c.on_hand).where(inventory.c.sku == SKU)
        ).scalar_one()
    time.sleep(0.002)
    with engine(url).begin() as conn:
        conn.execute(inventory.update().where(inventory.c.sku == SKU).values(on_hand=count - 1))
        _ship_event(conn, run)
    _finish(url, run)


def ship_fixed(url: str, worker: int, iteration: int) -> None:
    """One atomic UPDATE ... SET on_hand = on_hand - 1, with its event, in one transaction."""
    run = _start(url, worker)
    with engine(url).begin() as conn:
        conn.execute(
            inventory.update().where(inventory.c.sku == SKU).values(on_hand=inventory.c.on_hand - 1)
        )
        _ship_event(conn, run)
    _finish(url, run)


def _now() -> str:
    ns = time.time_ns()  # one reading: seconds and fraction from the same instant
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def _start(url: str, worker: int) -> int:
    with engine(url).begin() as conn:
        return int(
            conn.execute(
                job_runs.insert().values(
                    job_name="ship_stock",
                    sku=SKU,
                    worker=f"w{worker}",
                    attempt=1,
                    status="running",
                    started_at=_now(),
                )
            ).inserted_primary_key[0]
        )


def _finish(url: str, run: int) -> None:
    with engine(url).begin() as conn:
        conn.execute(
            job_runs.update()
            .where(job_runs.c.id == run)
            .values(status="succeeded", finished_at=_now())
        )


def _ship_event(conn: sa.Connection, run: int) -> None:
    conn.execute(
        stock_events.insert().values(
            sku=SKU, kind="shipped", qty=1, job_run_id=run, created_at=_now()
        )
    )
