"""``drift apply`` and ``drift rollback``: a plan, guarded, all or nothing, verified.

Order of business: refuse an unapproved, tampered, already applied plan or a
different target; take the per-database apply lock; create the history tables
(outside the transaction: DDL commits on MariaDB); then one transaction (or one
per batch with ``batch_size``) that records itself in the history, locks and
checks every row's guard, changes the rows set-based (a temp table joined to
the target), records each row's before and after, re-audits the changed keys
and commits only when the targeted drift is gone.
"""

from __future__ import annotations

import datetime as dt
import getpass
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from audit.collector import collector_paused
from audit.database import create_engine, database_errors, resolve_url
from audit.dialects import get_dialect
from audit.errors import GuardFailedError, RefusedError, VerifyError
from audit.findings import to_json
from audit.schema import BoundSpec, bind_spec
from audit.spec import load_spec
from remediate.approval import check_approvals
from remediate.history import APPLIED, FIX, IN_PROGRESS, ROLLBACK, History
from remediate.plan import (
    Action,
    Plan,
    check_scripts,
    fix_step,
    iter_keys,
    plan_dir,
    read_plan_files,
    rollback_step,
    spec_path,
)
from remediate.sql import (
    FAMILY_TYPES,
    ScriptDialect,
    Step,
    get_script_dialect,
    step_statement,
    type_family,
)
from remediate.target import fingerprint, target_problem
from remediate.verify import reaudit, targeted

Progress = Callable[[str], None]
PAUSE_ENV = "DRIFT_TEST_PAUSE_AFTER_BATCH"  # test hook: "SECONDS" or "BATCH:SECONDS"


@dataclass
class ApplyResult:
    """What an apply (or its dry run) changed, or would change."""

    plan_id: str
    operation: str
    dry_run: bool
    changes: list[dict[str, Any]] = field(default_factory=list)
    guard_failures: list[dict[str, Any]] = field(default_factory=list)
    batches_total: int = 1
    batches_skipped: int = 0
    manual: int = 0
    target_override: str | None = None

    @property
    def rows_changed(self) -> int:
        return len(self.changes)


# The loaded plan (about a million objects at 100,000 actions) lives to the end, and the
# run allocates as many again: with the collector running, its full passes walked all of
# them again and again, ~1.5 s of a 6.5 s apply (audit.collector).
@collector_paused()
def apply_plan(
    plan: str | Path,
    db: str,
    *,
    dry_run: bool = False,
    batch_size: int | None = None,
    lock_timeout: float = 5.0,
    require: int = 1,
    target_override: str | None = None,
    operation: str = FIX,
    progress: Progress | None = None,
) -> ApplyResult:
    """Apply (or with ``operation="rollback"`` undo) an approved plan; see the module doc."""
    say = progress or (lambda _m: None)
    folder = plan_dir(plan)
    # Each approved file is read once: what is hashed for the approvals is what is parsed
    # and compared (hashed in a thread while plan.json parses: read_plan_files).
    files = read_plan_files(folder)
    loaded, sha = files.plan, files.sha256
    approvals = [] if dry_run else check_approvals(folder, require, operation, files.hashes)
    # The scripts a person reviewed are this plan's renderings, and the statements this
    # operation runs are its actions' data (the other operation's are checked when it runs).
    check_scripts(files, (operation,))
    del files  # the scripts' bytes (~80 MB at 100,000 actions) are not needed any more
    spec = load_spec(spec_path(folder))
    if spec.sha256 != loaded.spec_sha256:
        raise RefusedError("refused: the audit's drift.toml changed since the plan was made")
    if batch_size is not None and batch_size < 1:
        raise RefusedError("--batch-size must be at least 1")
    if target_override is not None and not target_override.strip():
        raise RefusedError("--target-override needs a reason")
    url, _ = resolve_url(db, None)
    script = get_script_dialect(url.get_backend_name())
    engine = create_engine(url)
    try:
        with database_errors(url, "cannot connect"):
            conn = engine.connect()
            # Before anything else: every wait for a lock, from here on, is bounded.
            script.set_lock_timeout(conn, lock_timeout)
            # The values of the plan mean what they meant in the audit's session.
            script.set_session(conn, loaded.fingerprint)
            conn.commit()
        try:
            run = _Run(
                plan=loaded,
                sha=sha,
                approvers=",".join(sorted({a.by for a in approvals})),
                operation=operation,
                dry_run=dry_run,
                script=script,
                url=url,
                conn=conn,
                say=say,
            )
            with database_errors(url, "cannot read the target's schema"):
                run.bound = bind_spec(spec, conn)
                conn.rollback()
                run.check_target(target_override)
            # Only now do transactions take the write lock up front (SQLite's BEGIN
            # IMMEDIATE): reading the schema must not wait for writers.
            conn.rollback()
            run.conn = conn = script.apply_connection(conn)
            return run.execute(batch_size, target_override)
        finally:
            conn.close()
    finally:
        engine.dispose()


def rollback_plan(plan: str | Path, db: str, **kwargs: Any) -> ApplyResult:
    """Undo an applied plan with rollback.sql's steps (needs its own approval)."""
    return apply_plan(plan, db, operation=ROLLBACK, **kwargs)


@dataclass
class _Run:
    plan: Plan
    sha: str
    approvers: str
    operation: str
    dry_run: bool
    script: ScriptDialect
    url: URL
    conn: Connection
    say: Progress
    bound: BoundSpec | None = None
    database: str = ""
    _temp_names: Iterator[int] = field(default_factory=itertools.count)
    _tables: dict[str, tuple[sa.Table, list[str], dict[str, str]]] = field(default_factory=dict)

    # ----------------------------------------------------------------- refusals

    def check_target(self, override: str | None) -> None:
        assert self.bound is not None
        live = fingerprint(self.conn, self.bound, self.url)
        self.conn.rollback()
        self.database = live["database"]
        problem = target_problem(self.plan.fingerprint, live)
        if problem is None:
            return
        if override is None:
            raise RefusedError(f"refused: {problem}; pass --target-override REASON to apply anyway")
        self.say(f"target override ({problem}): {override}")

    # ----------------------------------------------------------------- running

    def execute(self, batch_size: int | None, override: str | None) -> ApplyResult:
        conn, script = self.conn, self.script
        history = History()
        with database_errors(self.url, "cannot take the apply lock"):
            locked = script.try_apply_lock(conn, self.url, self.database)
            conn.commit()
        if not locked:
            raise RefusedError("refused: another drift apply is running on this database")
        try:
            with database_errors(self.url, f"{self.operation} failed"):
                if self.dry_run:
                    history.ensure_for_dry_run(conn)
                else:
                    history.ensure(conn)
                entry = history.entry(conn, self.plan.plan_id, self.operation)
                fix_entry = history.entry(conn, self.plan.plan_id, FIX)
                conn.rollback()
            self._refuse_done(entry, fix_entry)
            if entry is not None and entry.get("batch_size") and batch_size is None:
                # A batched apply that stopped part-way: resume it as it was started.
                batch_size = int(entry["batch_size"])
                if self.dry_run:
                    raise RefusedError(
                        f"refused: plan {self.plan.plan_id} is part-way through a batched "
                        f"{self.operation}; resume it (--batch-size {batch_size}) instead of a "
                        "dry run"
                    )
                self.say(f"resuming the batched {self.operation} with --batch-size {batch_size}")
            result = ApplyResult(
                plan_id=self.plan.plan_id,
                operation=self.operation,
                dry_run=self.dry_run,
                manual=sum(1 for a in self.plan.actions if a.is_manual),
                target_override=override,
            )
            actions = self.plan.automatic()
            if self.operation == ROLLBACK:
                actions.reverse()
            batches = _batches(actions, batch_size)
            result.batches_total = len(batches)
            with database_errors(self.url, f"{self.operation} failed"):
                if batch_size is None or self.dry_run:
                    self._one_transaction(history, actions, result, override)
                else:
                    self._batched(history, batches, batch_size, entry, result, override)
            return result
        finally:
            try:
                self.conn.rollback()
                script.release_apply_lock(conn)
                conn.commit()
            except Exception:  # noqa: BLE001 - closing the connection releases it anyway
                pass

    def _refuse_done(self, entry: dict | None, fix_entry: dict | None) -> None:
        plan_id = self.plan.plan_id
        if entry is not None and entry["outcome"] == APPLIED:
            what = "rolled back" if self.operation == ROLLBACK else "applied"
            raise RefusedError(
                f"refused: plan {plan_id} was already {what} "
                f"(via {entry['via']}, finished {entry['finished_at']})"
            )
        if self.operation == ROLLBACK and (fix_entry is None or fix_entry["outcome"] != APPLIED):
            raise RefusedError(f"refused: plan {plan_id} was never applied; nothing to roll back")

    def _log_values(self, outcome: str, override: str | None) -> dict[str, Any]:
        return {
            "plan_id": self.plan.plan_id,
            "operation": self.operation,
            "plan_sha256": self.sha,
            "via": "drift apply" if self.operation == FIX else "drift rollback",
            "approvers": self.approvers,
            "applied_by": _who(),
            "target_override": override,
            "started_at": _now(),
            "outcome": outcome,
        }

    def _finish_log(self, history: History, rows: int) -> None:
        self.conn.execute(
            history.log.update()
            .where(
                history.log.c.plan_id == self.plan.plan_id,
                history.log.c.operation == self.operation,
            )
            .values(outcome=APPLIED, finished_at=_now(), rows_changed=rows)
        )

    def _one_transaction(
        self, history: History, actions: list[Action], result: ApplyResult, override: str | None
    ) -> None:
        conn = self.conn
        conn.begin()
        try:
            conn.execute(history.log.insert().values(self._log_values(IN_PROGRESS, override)))
            self.say(f"applying {len(actions)} change(s) in one transaction")
            self._apply(history, actions, None, result)
            self._finish_log(history, result.rows_changed)
            if self.dry_run:
                conn.rollback()
                self.say("dry run: rolled back")
            else:
                conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _batched(
        self,
        history: History,
        batches: list[list[Action]],
        batch_size: int,
        entry: dict | None,
        result: ApplyResult,
        override: str | None,
    ) -> None:
        conn = self.conn
        plan_id = self.plan.plan_id
        if entry is None:
            with conn.begin():
                values = self._log_values(IN_PROGRESS, override) | {"batch_size": batch_size}
                conn.execute(history.log.insert().values(values))
        elif entry["batch_size"] != batch_size:
            raise RefusedError(
                f"refused: plan {plan_id} was started with --batch-size {entry['batch_size']}; "
                "resume it with the same batch size"
            )
        with conn.begin():
            done = history.done_batches(conn, plan_id, self.operation)
        if done:
            self.say(f"resuming: {len(done)} of {len(batches)} batch(es) already committed")
        result.batches_skipped = len(done)
        for number, batch in enumerate(batches, start=1):
            if number in done:
                continue
            before = result.rows_changed
            with conn.begin():
                self._apply(history, batch, number, result)
                conn.execute(
                    history.batches.insert().values(
                        plan_id=plan_id,
                        operation=self.operation,
                        batch_no=number,
                        rows_changed=result.rows_changed - before,
                        committed_at=_now(),
                    )
                )
            self.say(f"batch {number}/{len(batches)} committed")
            _test_pause(number)
        with conn.begin():
            total = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(history.batches.c.rows_changed), 0)).where(
                    history.batches.c.plan_id == plan_id,
                    history.batches.c.operation == self.operation,
                )
            ).scalar_one()
            self._finish_log(history, int(total))

    # ----------------------------------------------------------------- the work

    def _apply(
        self, history: History, actions: list[Action], batch: int | None, result: ApplyResult
    ) -> None:
        """Guard, change, record and verify ``actions`` in the current transaction."""
        steps = [(a, fix_step(a) if self.operation == FIX else rollback_step(a)) for a in actions]
        groups: dict[tuple[str, str, str | None], list[tuple[Action, Step]]] = {}
        changes: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for action, step in steps:
            if step.op in ("delta", "cas"):
                groups.setdefault((step.entity, step.op, step.column), []).append((action, step))
            else:
                self._row_step(action, step, changes, failures)
        for (entity, op, column), members in groups.items():
            self._update_group(entity, op, str(column), members, changes, failures)
        if failures and not self.dry_run:
            first = failures[0]
            raise GuardFailedError(
                f"guard failed for {len(failures)} action(s), first: action {first['action_id']} "
                f"({first['entity']} {first['key']}{_dot(first['column'])}): {first['reason']}; "
                "nothing was applied"
            )
        if changes:
            plan_id, operation = self.plan.plan_id, self.operation
            rows = [
                (
                    plan_id,
                    operation,
                    c["action_id"],
                    batch,
                    c["entity"],
                    c["key"],
                    c["column"],
                    to_json(c["before"]),
                    to_json(c["after"]),
                )
                for c in changes
            ]
            self._insert(history.rows, rows)
        if self.operation == FIX:
            self._verify(actions, failures)
        result.changes.extend(changes)
        result.guard_failures.extend(failures)

    def _verify(self, actions: list[Action], failures: list[dict[str, Any]]) -> None:
        assert self.bound is not None
        failed = {f["action_id"] for f in failures}
        applied = [a for a in actions if a.id not in failed]
        if not applied:
            return
        self.say(f"verifying {len(applied)} change(s) inside the transaction")
        findings = reaudit(self.conn, self.bound, get_dialect(self.script.name), iter_keys(applied))
        remaining = targeted(findings, applied)
        if remaining:
            f = remaining[0]
            raise VerifyError(
                f"verify failed: {len(remaining)} targeted finding(s) remain after the fix "
                f"(first: {f.entity} {f.key_json}{_dot(f.column)} {f.kind}); rolled back, "
                "nothing was applied"
            )

    def _live_table(self, entity: str) -> tuple[sa.Table, list[str], dict[str, str]]:
        if entity not in self._tables:
            self._tables[entity] = self._make_live_table(entity)
        return self._tables[entity]

    def _make_live_table(self, entity: str) -> tuple[sa.Table, list[str], dict[str, str]]:
        assert self.bound is not None
        table = self.bound.entities[entity].table
        families = {c.name: type_family(c.type) for c in table.columns}
        key = list(self.plan.entities[entity]["key"])
        if self.script.name == "sqlite":
            # SQLite's own types would insist on Python datetimes; values travel as text.
            columns = [
                sa.Column(c.name, FAMILY_TYPES.get(families[c.name], sa.String)())
                for c in table.columns
            ]
            table = sa.Table(table.name, sa.MetaData(), *columns, schema=table.schema)
        return table, key, families

    def _row_step(
        self,
        action: Action,
        step: Step,
        changes: list[dict[str, Any]],
        failures: list[dict[str, Any]],
    ) -> None:
        table, key, _ = self._live_table(step.entity)
        statement = step_statement(step, table, key, self.script)
        # SQLAlchemy keeps an INSERT's rowcount only when asked to.
        count = self.conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount
        if count != 1:
            failures.append(
                _failure(
                    action,
                    "a row with this key already exists"
                    if step.op == "insert"
                    else "the row is gone or changed since the audit",
                )
            )
            return
        changes.append(
            _change(
                action,
                step.row if step.op == "delete" else None,
                step.row if step.op == "insert" else None,
            )
        )

    def _update_group(
        self,
        entity: str,
        op: str,
        column: str,
        members: list[tuple[Action, Step]],
        changes: list[dict[str, Any]],
        failures: list[dict[str, Any]],
    ) -> None:
        conn, script = self.conn, self.script
        target, key, families = self._live_table(entity)
        col = target.c[column]
        name = f"drift_fix_{next(self._temp_names)}"
        temp = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("action_id", sa.Integer, primary_key=True, autoincrement=False),
            *(
                sa.Column(f"k{i}", script.temp_type(target.c[k], families[k]))
                for i, k in enumerate(key)
            ),
            sa.Column(
                "val",
                (script.delta_type if op == "delta" else script.temp_type)(col, families[column]),
            ),
            sa.Column("obs", script.temp_type(col, families[column])),
            prefixes=["TEMPORARY"],
        )
        temp.create(conn)
        try:
            self._insert(temp, [(s.action_id, *s.key, s.value, s.observed) for _, s in members])
            joined = sa.and_(*(target.c[k] == temp.c[f"k{i}"] for i, k in enumerate(key)))
            audit_dialect = get_dialect(script.name)
            if op == "cas":
                guard = sa.not_(
                    audit_dialect.differs(col, temp.c.obs, isinstance(col.type, sa.String))
                )
            else:
                guard = col.is_not(None)
            # The values before and after as history records them: read exactly (a MariaDB
            # FLOAT is read rounded to 6 digits otherwise).
            read = audit_dialect.exactly(col)
            locked = conn.execute(
                sa.select(
                    temp.c.action_id, read.label("before"), sa.case((guard, 1), else_=0).label("ok")
                )
                .select_from(temp.join(target, joined))
                .with_for_update()
            ).all()
            # (action_id, before, ok) by position: a Row's attributes are looked up by name.
            seen = {row[0]: row for row in locked}
            matches = Counter(row[0] for row in locked) if len(seen) < len(locked) else None
            ok_ids: dict[int, Any] = {}
            for action, _step in members:
                found = seen.get(action.id)
                if found is None:
                    failures.append(_failure(action, "the row is gone"))
                elif matches is not None and matches[action.id] > 1:
                    failures.append(_failure(action, f"the key matches {matches[action.id]} rows"))
                elif not found[2]:
                    failures.append(
                        _failure(
                            action, f"the value changed since the audit (now {to_json(found[1])})"
                        )
                    )
                else:
                    ok_ids[action.id] = found[1]
            if not ok_ids:
                return
            new_value = col + temp.c.val if op == "delta" else temp.c.val
            update = target.update().where(joined, guard).values({col.name: new_value})
            after: dict[int, Any] | None = None
            if script.update_returning:
                # The values after, as the UPDATE wrote them (one join fewer).
                returned = conn.execute(update.returning(temp.c.action_id, read)).all()
                updated, after = len(returned), dict(returned)
            else:
                updated = conn.execute(update).rowcount
            if updated != len(ok_ids) or (after is not None and after.keys() != ok_ids.keys()):
                raise GuardFailedError(
                    f"guard failed: {updated} row(s) of {entity} changed, {len(ok_ids)} expected; "
                    "nothing was applied"
                )
            if after is None:
                after = dict(
                    conn.execute(
                        sa.select(temp.c.action_id, read).select_from(temp.join(target, joined))
                    ).all()
                )
            for action, _step in members:
                if action.id in ok_ids:
                    changes.append(_change(action, ok_ids[action.id], after[action.id]))
        except BaseException:
            # The transaction is failing and will be rolled back (PostgreSQL drops the temp
            # table with it): dropping it now would only hide the real error behind
            # "current transaction is aborted".
            raise
        else:
            script.drop_temp(conn, name)

    def _insert(self, table: sa.Table, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (values in column order) into ``table``, in this transaction.

        COPY on PostgreSQL (:meth:`ScriptDialect.copy_rows`: 100,000 rows in 0.2-0.3 s,
        a tenth of the INSERTs' time), otherwise batched INSERTs; both store the same values.
        """
        families = [type_family(c.type) for c in table.columns]
        if self.script.copy_rows(self.conn, table, families, rows):
            return
        names = [c.key for c in table.columns]
        for start in range(0, len(rows), 10_000):
            chunk = rows[start : start + 10_000]
            self.conn.execute(table.insert(), [dict(zip(names, row)) for row in chunk])


def _test_pause(batch: int) -> None:
    """Sleep after a committed batch when a test asks for it (to kill us there)."""
    pause = os.environ.get(PAUSE_ENV)
    if not pause:
        return
    number, _, seconds = pause.rpartition(":")
    if not number or int(number) == batch:
        time.sleep(float(seconds))


def _batches(actions: list[Action], size: int | None) -> list[list[Action]]:
    """Batches of about ``size`` actions; one key's actions stay together."""
    if size is None:
        return [actions]
    by_key: dict[tuple[str, str], list[Action]] = {}
    for a in actions:
        by_key.setdefault((a.entity, a.key), []).append(a)
    batches: list[list[Action]] = []
    current: list[Action] = []
    for group in by_key.values():
        current.extend(group)
        if len(current) >= size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches or [[]]


def _change(action: Action, before: Any, after: Any) -> dict[str, Any]:
    return {
        "action_id": action.id,
        "entity": action.entity,
        "key": action.key,
        "column": action.column,
        "mode": action.mode,
        "before": before,
        "after": after,
    }


def _failure(action: Action, reason: str) -> dict[str, Any]:
    return {
        "action_id": action.id,
        "entity": action.entity,
        "key": action.key,
        "column": action.column,
        "reason": reason,
    }


def _dot(column: str | None) -> str:
    return f".{column}" if column else ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _who() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
