"""--lock-timeout bounds every wait of drift apply, and says so when it runs out."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from remediate.approval import approve
from tests.remediation_helpers import audited_shop, findings, shop_spec


def _apply(audit, url, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "drift",
            "-q",
            "apply",
            str(audit),
            "--db",
            url,
            "--lock-timeout",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sqlite_writer_holding_the_lock_makes_apply_give_up(sqlite_backend, tmp_path):
    audit = audited_shop(sqlite_backend, tmp_path)
    approve(audit, "alice")
    path = make_url(sqlite_backend.url).database
    held, release = threading.Event(), threading.Event()

    def writer():  # another process's write transaction, held open
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE inventory SET updated_at = updated_at WHERE sku = 'SKU-001'")
        held.set()
        release.wait(60)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(10)
        # The connection's own 30 s busy timeout would outlast this lock: --lock-timeout 1
        # must win, or apply would wait and then succeed.
        refused = _apply(audit, sqlite_backend.url)
        lock_still_held = not release.is_set()
    finally:
        release.set()
        thread.join(30)
    assert lock_still_held
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("drift: fix failed") and "database is locked" in refused.stderr
    assert refused.stderr.count("\n") == 1
    done = _apply(audit, sqlite_backend.url)
    assert done.returncode == 0, done.stderr
    assert findings(shop_spec(sqlite_backend), sqlite_backend, tmp_path, "after") == set()


def test_postgres_lock_timeout_is_named(tmp_path):
    from tests.conftest import make_backend, require_server

    require_server("postgresql")
    gen = make_backend("postgresql", tmp_path)
    backend = next(gen)
    try:
        audit = audited_shop(backend, tmp_path)
        approve(audit, "alice")
        holder = sa.create_engine(backend.url)
        with holder.connect() as conn:
            conn.execute(sa.text("SELECT * FROM inventory WHERE sku = 'SKU-003' FOR UPDATE"))
            refused = _apply(audit, backend.url)
            conn.rollback()
        holder.dispose()
        assert refused.returncode == 2
        assert "canceling statement due to lock timeout" in refused.stderr
        assert "current transaction is aborted" not in refused.stderr
        done = _apply(audit, backend.url)
        assert done.returncode == 0, done.stderr
    finally:
        next(gen, None)
