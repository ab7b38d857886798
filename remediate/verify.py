"""Verify: re-audit just a plan's keys and say which targeted drift remains.

The same diff as the audit (:func:`audit.diff.build_diff` with key filters),
run either on the apply connection inside the apply transaction (after the
writes, before commit) or, for ``drift verify``, in a read-only snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from audit.database import create_engine, database_errors, resolve_url
from audit.dialects import Dialect, get_dialect
from audit.diff import DiffQuery, build_diff, run_diff
from audit.errors import DataError, RefusedError, SpecError
from audit.findings import MISMATCH, Finding
from audit.schema import BoundEntity, BoundSpec, bind_spec
from audit.spec import load_spec
from remediate.plan import Action, Plan, iter_keys, load_plan, plan_dir, spec_path

CHUNK = 5000  # keys per diff query: stays under every driver's parameter limit
# Keys per diff query when each key list is one parameter (PostgreSQL's typed array,
# audit.dialects.in_list): 100,000 keys in 20 queries of 5,000 read the entity table
# 20 times (~1.5 s); in one query, once (~0.5 s).
ARRAY_CHUNK = 100_000


def reaudit(
    conn: Connection,
    bound: BoundSpec,
    dialect: Dialect,
    keys: Mapping[str, Sequence[tuple[Any, ...]]],
) -> list[Finding]:
    """Every finding of the given keys, per entity, on this connection.

    In the order that queries of :data:`CHUNK` keys each give them (the database's
    order within each), however many keys one query really checks.
    """
    findings: list[Finding] = []
    for entity_name, entity_keys in keys.items():
        entity = bound.entities[entity_name]
        for start in range(0, len(entity_keys), ARRAY_CHUNK):
            chunk = list(entity_keys[start : start + ARRAY_CHUNK])
            findings.extend(_findings_of(conn, bound, entity, dialect, chunk))
    return findings


def _findings_of(
    conn: Connection,
    bound: BoundSpec,
    entity: BoundEntity,
    dialect: Dialect,
    keys: list[tuple[Any, ...]],
) -> list[Finding]:
    """The findings of ``keys``: in one query when the keys travel as one parameter."""
    if len(keys) > CHUNK:
        diff = build_diff(bound, entity, dialect, keys)
        if _one_parameter_per_list(conn, diff):
            try:
                ordered = _in_chunk_order(list(run_diff(conn, bound, diff)), keys)
            except (DataError, SpecError):
                # A tie or a non-number, raised for the first such key in the database's
                # order: the chunks raise it for the key they meet first, as they did.
                ordered = None
            if ordered is not None:
                return ordered
    findings: list[Finding] = []
    for start in range(0, len(keys), CHUNK):
        diff = build_diff(bound, entity, dialect, keys[start : start + CHUNK])
        findings.extend(run_diff(conn, bound, diff))
    return findings


def _one_parameter_per_list(conn: Connection, diff: DiffQuery) -> bool:
    """True when no key list of ``diff`` becomes one parameter per key on ``conn``."""
    compiled = diff.select.compile(dialect=conn.dialect)
    return not any(bind.expanding for bind in compiled.binds.values())


def _in_chunk_order(findings: list[Finding], keys: list[tuple[Any, ...]]) -> list[Finding] | None:
    """One query's findings over ``keys`` as queries of :data:`CHUNK` keys give them.

    A stable sort by the chunk of each finding's key keeps the database's order
    within a chunk. None when a finding's key is not one of ``keys`` as such (a NULL
    key; a collation that equates different texts): its chunk cannot be told.
    """
    if not findings:
        return findings
    chunk_of = {key: i // CHUNK for i, key in enumerate(keys)}
    if not all(f.key in chunk_of for f in findings):
        return None
    findings.sort(key=lambda f: chunk_of[f.key])
    return findings


def targeted(findings: Iterable[Finding], actions: Iterable[Action]) -> list[Finding]:
    """The findings that are the drift one of ``actions`` was meant to remove.

    A mismatch action targets its cell; a row action (insert, delete, manual
    row) targets every finding of its key.
    """
    findings = list(findings)
    if not findings:
        return []
    cells: set[tuple[str, str, str | None]] = set()
    rows: set[tuple[str, str]] = set()
    for a in actions:
        if a.kind == MISMATCH:
            cells.add((a.entity, a.key, a.column))
        else:
            rows.add((a.entity, a.key))
    return [
        f
        for f in findings
        if (f.entity, f.key_json) in rows
        or (f.kind == MISMATCH and (f.entity, f.key_json, f.column) in cells)
    ]


@dataclass(frozen=True)
class VerifyResult:
    plan_id: str
    checked_keys: int
    remaining: list[Finding]
    manual: list[Finding] = field(default_factory=list)  # left to a person by the plan

    @property
    def clean(self) -> bool:
        return not self.remaining


def verify_plan(plan: str | Path, db: str) -> VerifyResult:
    """Re-audit the plan's keys in a read-only snapshot; what the plan targeted and remains."""
    folder = plan_dir(plan)
    loaded: Plan = load_plan(folder)
    spec = load_spec(spec_path(folder))
    if spec.sha256 != loaded.spec_sha256:
        raise RefusedError("refused: the audit's drift.toml changed since the plan was made")
    url, _ = resolve_url(db, None)
    dialect = get_dialect(url.get_backend_name())
    keys = iter_keys(loaded.actions)
    engine = create_engine(url)
    try:
        with database_errors(url, "verify failed"), engine.connect() as conn:
            bound = bind_spec(spec, conn)
            conn.rollback()
            conn = dialect.open_snapshot(conn)
            try:
                findings = reaudit(conn, bound, dialect, keys)
            finally:
                conn.rollback()
    finally:
        engine.dispose()
    # The fix targets what it acted on; manual actions are reported, not held against it.
    fixed = [a for a in loaded.actions if a.mode != "manual"]
    manual = [a for a in loaded.actions if a.mode == "manual"]
    return VerifyResult(
        plan_id=loaded.plan_id,
        checked_keys=sum(len(k) for k in keys.values()),
        remaining=targeted(findings, fixed),
        manual=targeted(findings, manual),
    )
