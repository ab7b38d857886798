"""Shared setup for remediation tests: the demo shop audited on a backend."""

from __future__ import annotations

import subprocess
from pathlib import Path

import sqlalchemy as sa

from audit import parse_spec, run_audit
from drift import demo
from remediate.plan import PlanOptions, build_plan, write_plan


def shop_spec(backend):
    return parse_spec(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{backend.url}"'))


def audited_shop(backend, tmp_path: Path, delete_orphans: bool = True) -> Path:
    """Build the demo shop on ``backend``, audit it, plan; returns the audit folder."""
    with backend.engine.begin() as conn:
        demo.metadata.create_all(conn)
        demo.build_shop(conn)
    out = tmp_path / "audit"
    run_audit(shop_spec(backend), out=out, write_report=False)
    if delete_orphans:
        write_plan(out, build_plan(out, PlanOptions(delete_orphans=True)))
    return out


STATE_KINDS = {"mismatch", "missing_row", "orphan_row", "duplicate_key", "null_key"}


def findings(spec, backend, tmp_path: Path, name: str) -> set[tuple]:
    """(entity, key, column, kind) of a fresh audit's state findings.

    Outbox findings (the demo's unannounced event) are about messages, not rows: a
    plan lists them as manual and they remain after a fix, by design.
    """
    import pyarrow.parquet as pq

    result = run_audit(spec, db=backend.url, out=tmp_path / name, write_report=False)
    rows = pq.read_table(result.findings_path).to_pylist()
    return {
        (r["entity"], r["key"], r["column"], r["kind"]) for r in rows if r["kind"] in STATE_KINDS
    }


def table_state(backend, *tables: str) -> dict[str, list[tuple]]:
    """Every row of the tables, sorted (a snapshot to prove 'nothing changed')."""
    state = {}
    with backend.engine.connect() as conn:
        inspector = sa.inspect(conn)
        for name in tables:
            if not inspector.has_table(name):
                state[name] = []  # history tables are created before any transaction
                continue
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            rows = conn.execute(sa.select(table)).all()
            state[name] = sorted((tuple(r) for r in rows), key=repr)
    return state


def run_client(backend, script: Path) -> subprocess.CompletedProcess:
    """Run a script with the engine's standard client, reading it from stdin."""
    command, env = backend.client_command()
    return subprocess.run(
        command, input=script.read_bytes(), env=env, capture_output=True, timeout=120
    )
