"""Remediation plans: from an audit's findings to guarded actions and scripts.

A plan lives in the audit folder's ``plan/``: ``plan.json`` (the data),
``fix.sql`` and ``rollback.sql`` (renderings of it for the target's dialect)
and, once someone approves it, ``approvals.json``. Everything here works
offline, from the audit folder alone.

Fix modes per mismatch:

* ``delta`` (default for sum and count): ``SET col = col + correction``;
  commutes with concurrent legitimate writes.
* ``cas`` (default for min, max, first, last; selectable for all): ``SET col =
  expected WHERE key = ... AND col = observed``.

Row findings: ``missing_row`` becomes an INSERT when every NOT NULL column
without a default is known; ``orphan_row`` a DELETE guarded by the whole
observed row, only with ``delete_orphans``; ``duplicate_key`` and ``null_key``
are always manual.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from audit.collector import collector_paused
from audit.errors import AuditFolderError, OutputError, PlanError
from audit.findings import (
    ABSENT,
    DUPLICATE_KEY,
    MISMATCH,
    MISSING_ROW,
    NULL_KEY,
    ORPHAN_ROW,
    from_json,
    read_findings,
    to_json,
)
from audit.output import FINDINGS, SPEC_COPY, read_summary
from audit.templating import sql_environment
from remediate.sql import ScriptDialect, Step, get_script_dialect, offline_table
from remediate.target import FAMILIES, TARGET, parse_target, read_target

PLAN_DIR = "plan"
PLAN_JSON = "plan.json"
FIX_SQL = "fix.sql"
ROLLBACK_SQL = "rollback.sql"
APPROVALS = "approvals.json"
PLAN_FILES = (PLAN_JSON, FIX_SQL, ROLLBACK_SQL)

MODES = ("delta", "cas")
DELTA_FOLDS = ("sum", "count")


@dataclass(frozen=True)
class PlanOptions:
    """How to plan: per-column modes ("entity.column" -> mode), orphans."""

    modes: Mapping[str, str] = field(default_factory=dict)
    all_cas: bool = False
    delete_orphans: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "modes": dict(self.modes),
            "all_cas": self.all_cas,
            "delete_orphans": self.delete_orphans,
        }


@dataclass(frozen=True)
class Action:
    """One planned change (or a manual item) for one finding."""

    id: int
    entity: str
    key: str
    column: str | None
    kind: str
    mode: str
    before: Any
    after: Any
    sql: tuple[str, ...] = ()
    rollback_sql: tuple[str, ...] = ()
    manual_reason: str | None = None

    @cached_property
    def key_values(self) -> tuple[Any, ...]:
        return tuple(from_json(self.key))

    @property
    def is_manual(self) -> bool:
        return self.mode == "manual"


@dataclass(frozen=True)
class Plan:
    plan_id: str
    created_at: str
    audit: str
    spec_sha256: str
    fingerprint: dict[str, Any]
    watermarks: dict[str, Any]
    options: dict[str, Any]
    entities: dict[str, Any]
    actions: tuple[Action, ...]

    @property
    def dialect(self) -> str:
        return str(self.fingerprint["dialect"])

    def automatic(self) -> list[Action]:
        return [a for a in self.actions if not a.is_manual]


# --------------------------------------------------------------------------- steps


def fix_step(action: Action) -> Step:
    """The forward change of an action."""
    key = action.key_values
    if action.mode == "delta":
        value = _number(action.after) - _number(action.before)
        return Step(action.id, action.entity, key, "delta", action.column, value=value)
    if action.mode == "cas":
        return Step(
            action.id,
            action.entity,
            key,
            "cas",
            action.column,
            value=action.after,
            observed=action.before,
        )
    if action.mode == "insert":
        return Step(action.id, action.entity, key, "insert", row=dict(action.after))
    if action.mode == "delete":
        return Step(action.id, action.entity, key, "delete", row=dict(action.before))
    raise PlanError(f"action {action.id} is manual and has no SQL")


def rollback_step(action: Action) -> Step:
    """The change that undoes :func:`fix_step`."""
    return _undo(fix_step(action))


def _undo(step: Step) -> Step:
    head = (step.action_id, step.entity, step.key)
    if step.op == "delta":
        return Step(*head, "delta", step.column, value=-step.value)
    if step.op == "cas":
        return Step(*head, "cas", step.column, value=step.observed, observed=step.value)
    return Step(*head, "delete" if step.op == "insert" else "insert", row=step.row)


_INT64_MAX = 2**63 - 1


def _number(value: Any) -> Any:
    return value if isinstance(value, (int, Decimal)) else Decimal(str(value))


# --------------------------------------------------------------------------- planning


# A plan of 100,000 actions is about a million objects, alive to the end: with the
# collector running, its full passes cost ~0.5 s of build_plan (audit.collector).
@collector_paused()
def build_plan(
    audit_dir: str | Path, options: PlanOptions | None = None, audit_name: str | None = None
) -> Plan:
    """Plan the remediation of an audit folder's findings (no database needed)."""
    audit_dir = Path(audit_dir)
    options = options or PlanOptions()
    summary = read_summary(audit_dir)
    target = read_target(audit_dir)
    spec_entities = summary["entities"]
    _check_modes(options, spec_entities)
    fingerprint = target["fingerprint"]
    script = get_script_dialect(fingerprint["dialect"])
    actions: list[Action] = []
    for row in read_findings(audit_dir / FINDINGS):
        entity = row["entity"]
        action = _plan_finding(
            len(actions) + 1, row, spec_entities[entity], target, entity, options
        )
        actions.append(action)
    tables = {name: offline_table(info) for name, info in target["entities"].items()}
    actions = [_with_sql(a, script, target, tables) for a in actions]
    now = dt.datetime.now(dt.UTC)
    return Plan(
        plan_id=f"plan-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}",
        created_at=now.isoformat(timespec="seconds"),
        audit=audit_name or audit_dir.resolve().name,
        spec_sha256=_copy_sha256(audit_dir, summary),
        fingerprint=fingerprint,
        watermarks=summary.get("watermarks", {}),
        options=options.to_json(),
        entities={
            name: {"table": info["name"], "schema": info.get("schema"), "key": info["key"]}
            for name, info in target["entities"].items()
        },
        actions=tuple(actions),
    )


def _copy_sha256(audit_dir: Path, summary: Mapping[str, Any]) -> str:
    """SHA-256 of the audit folder's spec copy, the file apply and verify load.

    The copy has passwords masked, so it differs from the audited spec whenever
    the spec's URL holds one; the summary's hash is only a fallback.
    """
    try:
        text = (audit_dir / SPEC_COPY).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return str(summary["spec"]["sha256"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_modes(options: PlanOptions, entities: Mapping[str, Any]) -> None:
    for name, mode in options.modes.items():
        entity, _, column = name.partition(".")
        if mode not in MODES:
            raise PlanError(f"--mode {name}={mode}: unknown mode (use delta or cas)")
        if entity not in entities or column not in entities[entity]["columns"]:
            known = [f"{e}.{c}" for e, info in entities.items() for c in info["columns"]]
            raise PlanError(f"--mode {name}: no such audited column{_did_you_mean(name, known)}")
        fold = entities[entity]["columns"][column]["fold"]
        if mode == "delta" and fold not in DELTA_FOLDS:
            raise PlanError(
                f"--mode {name}=delta: delta needs a sum or count column, {name} is {fold!r}"
            )


def _did_you_mean(word: str, candidates: list[str]) -> str:
    from audit.errors import did_you_mean

    return did_you_mean(word, candidates)


# Findings about messages and witnesses, not about the state of a row: drift never writes
# outbox messages or job logs, so each is listed for a person, with what to do.
EVIDENCE_REASONS = {
    "unannounced_event": "the event has no outbox message: the application must publish it "
    "(drift does not write messages)",
    "duplicate_announcement": "an event was announced more than once: consumers must be "
    "idempotent, or the application must remove the extra messages",
    "stuck_message": "the message was never published: check the outbox relay",
    "orphan_message": "a message announces an event that does not exist: investigate the "
    "producer before deleting it",
    "witness_disagreement": "two witnesses disagree about the rebuilt value: fix the spec or "
    "the witness before planning",
}


def _plan_finding(
    action_id: int,
    row: dict[str, Any],
    spec_entity: dict[str, Any],
    target: dict[str, Any],
    entity: str,
    options: PlanOptions,
) -> Action:
    kind = row["kind"]
    expected, actual = from_json(row["expected"]), from_json(row["actual"])
    fields: dict[str, Any] = {
        "id": action_id,
        "entity": entity,
        "key": row["key"],
        "column": row["column"],
        "kind": kind,
        "before": None if actual is ABSENT else _as_stored(actual),
        "after": None if expected is ABSENT else _as_stored(expected),
    }

    def planned(mode: str, **changes: Any) -> Action:
        return Action(**(fields | changes), mode=mode)

    def manual(reason: str) -> Action:
        return planned("manual", manual_reason=reason)

    if kind in EVIDENCE_REASONS:
        return manual(EVIDENCE_REASONS[kind])
    info = target["entities"][entity]
    columns = {c["name"]: c for c in info["columns"]}
    if kind in (DUPLICATE_KEY, NULL_KEY):
        return manual(
            "duplicate keys need a person to decide which row is right"
            if kind == DUPLICATE_KEY
            else "rows with a NULL key belong to no entity; fix the writer, then the rows"
        )
    if None in info["key"]:
        return manual("the entity key is an expression, not plain columns")
    unrenderable = [n for n in info["key"] if columns[n]["family"] not in FAMILIES]
    if unrenderable:
        return manual(f"key column(s) {', '.join(unrenderable)} have a type drift cannot render")
    if kind == MISMATCH:
        column = columns[row["column"]]
        if column["family"] not in FAMILIES:
            return manual(f"column {column['name']} ({column['type']}) cannot be rendered")
        fold = spec_entity["columns"][row["column"]]["fold"]
        name = f"{entity}.{row['column']}"
        mode = options.modes.get(name) or (
            "cas" if options.all_cas or fold not in DELTA_FOLDS else "delta"
        )
        if mode == "delta" and not (_numeric(actual) and _numeric(expected)):
            mode = "cas"  # NULL + correction is NULL: only an exact set works
        elif (
            mode == "delta"
            and target["fingerprint"]["dialect"] == "sqlite"
            and column["family"] == "integer"
            and abs(_number(expected) - _number(actual)) > _INT64_MAX
        ):
            # SQLite reads an integer literal beyond 64 bits as a REAL, and the sum
            # with it is rounded silently (-9e18 + 18000000000000000001 is 9e18).
            mode = "cas"
        return planned(mode)
    if kind == MISSING_ROW:
        values = dict(zip(info["key"], from_json(row["key"]))) | dict(expected)
        unknown = [
            c["name"]
            for c in info["columns"]
            if not c["nullable"] and not c["has_default"] and values.get(c["name"]) is None
        ]
        if unknown:
            return manual(
                f"cannot insert: NOT NULL column(s) {', '.join(unknown)} have no default "
                "and no known value"
            )
        bad = [n for n in values if columns[n]["family"] not in FAMILIES]
        if bad:
            return manual(f"cannot insert: column(s) {', '.join(bad)} cannot be rendered")
        return planned("insert", after=_as_stored(values))
    if kind == ORPHAN_ROW:
        if not options.delete_orphans:
            return manual("orphan rows are deleted only when planned with --delete-orphans")
        full = target.get("orphans", {}).get(entity, {}).get(row["key"])
        if full is None:
            return manual("the whole observed row was not captured by the audit")
        bad = [n for n in full if columns[n]["family"] not in FAMILIES]
        if bad:
            return manual(f"cannot guard a delete on column(s) {', '.join(bad)}")
        return planned("delete", before=_as_stored(full))
    return manual(f"unknown finding kind {kind!r}")


def _as_stored(value: Any) -> Any:
    """``value`` as :func:`load_plan` reads it back from plan.json, so that the plan's
    statements render the very data ``drift apply`` runs (check_actions compares them):
    a Decimal written without a point (1E+20, -0) comes back an int."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is Decimal and value.is_finite() and value.as_tuple().exponent < 0:
        return value  # its text has a point: read back as the same Decimal
    if kind is dict:
        return {name: _as_stored(v) for name, v in value.items()}
    return json.loads(to_json(value), parse_float=Decimal)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, Decimal, float)) and not isinstance(value, bool)


def _with_sql(
    action: Action, script: ScriptDialect, target: dict[str, Any], tables: dict[str, Any]
) -> Action:
    if action.is_manual:
        return action
    info = target["entities"][action.entity]
    return _with_texts(action, *_statements(action, script, tables[action.entity], info["key"]))


def _statements(
    action: Action, script: ScriptDialect, table: Any, key: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An automatic action's ``sql`` and ``rollback_sql``, rendered from its data."""
    step = fix_step(action)
    return (_guarded(script, step, table, key),), (_guarded(script, _undo(step), table, key),)


def _with_texts(action: Action, sql: tuple[str, ...], rollback_sql: tuple[str, ...]) -> Action:
    """``dataclasses.replace(action, sql=..., rollback_sql=...)``, without its per-call
    field introspection (a fifth of build_plan at 100,000 actions)."""
    new = object.__new__(Action)
    new.__dict__.update(action.__dict__, sql=sql, rollback_sql=rollback_sql)
    return new


def _guarded(script: ScriptDialect, step: Step, table: Any, key: list[str]) -> str:
    return script.guarded(script.compile_step(step, table, key), step.action_id)


# --------------------------------------------------------------------------- rendering


def render_script(plan: Plan, operation: str) -> str:
    """fix.sql or rollback.sql: all or nothing, recorded in the history table."""
    import sqlalchemy as sa

    from remediate.history import History

    script = get_script_dialect(plan.dialect)
    rollback = operation == "rollback"
    automatic = plan.automatic()
    ordered = list(reversed(automatic)) if rollback else automatic
    history = History()
    record = script.plain(
        script.compile(
            history.log.insert().values(
                plan_id=plan.plan_id,
                operation=operation,
                via=f"{operation}.sql",
                applied_by=script.script_user(),
                started_at=sa.func.current_timestamp(),
                finished_at=sa.func.current_timestamp(),
                outcome="applied",
                rows_changed=len(automatic),
            )
        )
    )
    # "action N: " + what the action is, made comment-safe once per kind of action:
    # the same text as _comment() of the whole line (N is a number, the rest not blank).
    described: dict[tuple[str, str, str | None, str], str] = {}

    def describe(a: Action) -> str:
        what = (a.kind, a.entity, a.column, a.mode)
        text = described.get(what)
        if text is None:
            text = described[what] = _comment(
                f"{a.kind} {a.entity}"
                + (f".{a.column}" if a.column else "")
                + f" ({_mode_text(a.mode, rollback)})"
            )
        return f"action {a.id}: {text}"

    blocks = [_Block(describe(a), (a.rollback_sql if rollback else a.sql)[0]) for a in ordered]
    manual = [
        _comment(f"action {a.id}: {a.kind} {a.entity}: {a.manual_reason}")
        for a in plan.actions
        if a.is_manual
    ]
    file = ROLLBACK_SQL if rollback else FIX_SQL
    server_lines, server_checks = _server_check(script, plan)
    header = [
        _comment(f"drift {'rollback' if rollback else 'fix'} script for plan {plan.plan_id}"),
        _comment(f"audit: {plan.audit} (spec sha256 {plan.spec_sha256[:16]})"),
        _comment(f"target: {plan.fingerprint['dialect']} database {plan.fingerprint['database']}"),
        *server_lines,
        _comment(f"created: {plan.created_at}"),
        f"{len(automatic)} guarded change(s), {len(manual)} manual action(s).",
        "All or nothing: any guard that misses aborts the whole script; running it",
        "a second time refuses and changes nothing.",
        *(
            [
                "It refuses unless the fix was applied completely (fix.sql or drift apply)",
                "and not rolled back yet.",
            ]
            if rollback
            else []
        ),
        f"Run: {script.run_hint().replace('FILE', file)}",
        "Prefer `drift apply` (approval, fingerprint check, lock, verify).",
    ]
    template = sql_environment().get_template("remediation.sql.j2")
    return template.render(
        header=header,
        # rollback.sql needs the history tables a fix made; without them it refuses.
        prologue=[
            # fix.sql checks the server before it creates the history tables (a refused
            # script leaves nothing behind) and again in its transaction (below).
            *script.prologue(history=not rollback, checks=() if rollback else server_checks),
            *script.session_statements(plan.fingerprint),
        ],
        begin=script.begin(),
        guard_setup=script.guard_setup(),
        checks_comment=(
            "Refuses unless the fix was applied completely and not rolled back yet."
            if rollback
            else "Refuses when this plan was already applied (or is being applied)."
        ),
        # First in the transaction: psql without ON_ERROR_STOP goes on after an error,
        # and only a failed check inside the transaction makes it change nothing.
        checks=script.refuse_unless(
            [*server_checks, *_script_checks(script, history, plan.plan_id, rollback)]
        ),
        record=record,
        blocks=blocks,
        manual=manual,
        commit=script.commit(),
    )


def _server_check(script: ScriptDialect, plan: Plan) -> tuple[list[str], list[tuple[str, str]]]:
    """A script's header lines about the audited server and the checks that refuse any
    other (:meth:`ScriptDialect.server_checks`): fix.sql runs them before anything else,
    the history tables' DDL included, and both scripts first in their transaction. A plan
    that records no ``server`` (made before drift read it) renders as it did then: no
    line, no check."""
    fingerprint = plan.fingerprint
    if "server" not in fingerprint:
        return [], []
    server = fingerprint["server"]
    if server is None:
        why = fingerprint.get("server_note") or "unknown"
        return [
            _comment(f"server: unknown (the audit could not read its identity: {why})"),
            "This script does not check which server it runs on.",
        ], []
    checks = script.server_checks(plan.plan_id, str(server))
    if not checks:
        # SQLite: SQL reads neither the file's device and inode nor the host name. Its
        # path (PRAGMA database_list) is no identity: another machine's copy has the same
        # path, and the audited file reached through another path would be refused.
        return [
            _comment(f"server: {server}"),
            "This script does not check which file it runs on (SQL cannot read a file's",
            "device and inode): run it on the audited file only; drift apply checks it.",
        ], []
    return [
        _comment(f"server: {server}"),
        "It refuses to run on any other server, before it changes anything.",
    ], checks


def _script_checks(
    script: ScriptDialect, history: Any, plan_id: str, rollback: bool
) -> list[tuple[str, str]]:
    """The conditions a script checks in its transaction, before it records itself, with
    the message when one is false: the rule ``drift apply`` and ``drift rollback`` follow
    (apply.py ``_refuse_done``). The history record's primary key alone would stop a
    second run, but not a rollback of a fix that never ran."""
    import sqlalchemy as sa

    from remediate.history import APPLIED, FIX, LOG, ROLLBACK

    log = history.log

    def entry(operation: str, *where: Any) -> str:
        return script.compile(
            sa.exists().where(log.c.plan_id == plan_id, log.c.operation == operation, *where)
        )

    refused = f"drift: refused: plan {plan_id}"
    if not rollback:
        return [
            (
                f"NOT {entry(FIX)}",
                f"{refused} was already applied (or is being applied); nothing was changed",
            )
        ]
    never = f"{refused} was never applied; nothing to roll back, nothing was changed"
    return [
        (script.table_exists(LOG), never),
        (entry(FIX), never),
        (
            entry(FIX, log.c.outcome == APPLIED),
            f"{refused} was applied only in part (a batched apply stopped); nothing was changed",
        ),
        (
            f"NOT {entry(ROLLBACK)}",
            f"{refused} was already rolled back (or is being rolled back); nothing was changed",
        ),
    ]


class _Block(NamedTuple):
    """One action in a script's template. Jinja reads ``block.comment`` from an
    attribute directly; from a dict it first fails getattr (an exception per action)."""

    comment: str
    sql: str


def _mode_text(mode: str, rollback: bool) -> str:
    if not rollback:
        return mode
    return {"insert": "delete the inserted row", "delete": "re-insert the row"}.get(
        mode, f"undo {mode}"
    )


def _comment(text: str) -> str:
    """Text safe inside a one-line SQL comment."""
    return " ".join(str(text).split())


def plan_json(plan: Plan) -> str:
    """plan.json text: exact values (decimals keep their digits), one action per line."""
    head = {
        "plan_id": plan.plan_id,
        "created_at": plan.created_at,
        "audit": plan.audit,
        "spec_sha256": plan.spec_sha256,
        "fingerprint": plan.fingerprint,
        "watermarks": plan.watermarks,
        "options": plan.options,
        "entities": plan.entities,
    }
    lines = ["{"]
    for name, value in head.items():
        lines.append(f"  {json.dumps(name)}: {to_json(value)},")
    lines.append('  "actions": [')
    named: dict[str | None, str] = {}
    lines.append(",\n".join(f"    {_action_json(a, named)}" for a in plan.actions))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _action_json(a: Action, named: dict[str | None, str]) -> str:
    """``to_json`` of the action's fields as a dict, without building the dict.

    ``named`` keeps the JSON of the fields that repeat from action to action
    (entity, column, kind, mode, manual reason: text or None).
    """

    def once(value: str | None) -> str:
        text = named.get(value)
        if text is None:
            text = named[value] = _json_text(value)
        return text

    return (
        f'{{"id":{to_json(a.id)},"entity":{once(a.entity)},"key":{_json_text(a.key)},'
        f'"column":{once(a.column)},"kind":{once(a.kind)},'
        f'"mode":{once(a.mode)},"before":{to_json(a.before)},'
        f'"after":{to_json(a.after)},"sql":[{",".join(map(_json_text, a.sql))}],'
        f'"rollback_sql":[{",".join(map(_json_text, a.rollback_sql))}],'
        f'"manual_reason":{once(a.manual_reason)}}}'
    )


def _json_text(value: Any) -> str:
    """``to_json`` of a value that is almost always text."""
    return _encode_text(value) if type(value) is str else to_json(value)


# What to_json does with a str (json.dumps with ensure_ascii=False), minus dumps' overhead.
_encode_text: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


@collector_paused()
def write_plan(audit_dir: str | Path, plan: Plan) -> Path:
    """Write plan/ atomically (replacing an older plan and its approvals)."""
    audit_dir = Path(audit_dir)
    final = audit_dir / PLAN_DIR
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".plan.", suffix=".partial", dir=audit_dir))
        (staging / PLAN_JSON).write_text(plan_json(plan), encoding="utf-8")
        (staging / FIX_SQL).write_text(render_script(plan, "fix"), encoding="utf-8")
        (staging / ROLLBACK_SQL).write_text(render_script(plan, "rollback"), encoding="utf-8")
        if final.exists():
            old = final.with_name(f".plan.{secrets.token_hex(4)}.old")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, final)
    except OSError as exc:
        if staging is not None:  # a half-written plan never stays behind
            shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the plan in {audit_dir}: {exc.strerror}") from None
    return final


def propose_plan(staging: Path, audit_name: str) -> None:
    """The audit's hook: write the default plan into a (staging) audit folder."""
    write_plan(staging, build_plan(staging, audit_name=audit_name))


# --------------------------------------------------------------------------- loading


def plan_dir(path: str | Path) -> Path:
    """The plan folder for a plan folder or an audit folder."""
    path = Path(path)
    if (path / PLAN_JSON).is_file():
        return path
    if (path / PLAN_DIR / PLAN_JSON).is_file():
        return path / PLAN_DIR
    raise AuditFolderError(f"no plan found at {path} (expected {PLAN_JSON} or {PLAN_DIR}/)")


def load_plan(path: str | Path) -> Plan:
    """plan.json, unchecked (``drift verify``; what runs is read by :func:`read_plan_files`)."""
    folder = plan_dir(path)
    try:
        raw = (folder / PLAN_JSON).read_bytes()
    except OSError as exc:
        raise PlanError(f"{folder / PLAN_JSON} is not a valid plan: {exc}") from None
    return parse_plan(folder, raw)


def parse_plan(folder: Path, raw: bytes) -> Plan:
    """The plan in ``raw``, the bytes of ``folder``'s plan.json."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_float=Decimal)
        actions = tuple(
            Action(
                id=a["id"],
                entity=a["entity"],
                key=a["key"],
                column=a["column"],
                kind=a["kind"],
                mode=a["mode"],
                before=a["before"],
                after=a["after"],
                sql=tuple(a["sql"]),
                rollback_sql=tuple(a.get("rollback_sql", ())),
                manual_reason=a["manual_reason"],
            )
            for a in data["actions"]
        )
        return Plan(
            plan_id=data["plan_id"],
            created_at=data["created_at"],
            audit=data.get("audit", ""),
            spec_sha256=data["spec_sha256"],
            fingerprint=data["fingerprint"],
            watermarks=data["watermarks"],
            options=data.get("options", {}),
            entities=data["entities"],
            actions=actions,
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PlanError(f"{folder / PLAN_JSON} is not a valid plan: {exc}") from None


@dataclass(frozen=True)
class PlanFiles:
    """A plan's approved files (:func:`approved_files`), each read once: the bytes hashed
    for the approvals are the very bytes parsed (``plan``, ``target``) and compared with
    fresh renderings (``scripts``), so a file replaced between two reads (an editor
    saving, a sync tool) can never be run without being the approved content."""

    folder: Path
    plan: Plan
    target: dict[str, Any]
    scripts: dict[str, bytes]  # fix.sql and rollback.sql
    hashes: dict[str, str]  # as file_sha256s gives them

    @property
    def sha256(self) -> str:
        return combined_sha256(self.hashes)


def read_plan_files(path: str | Path) -> PlanFiles:
    """Read each approved file once, hash those bytes and parse them.

    plan.json (94 MB at 100,000 actions) is read first; a thread hashes it and reads
    and hashes the other files (~180 MB in all; reading and hashing release the GIL)
    while this thread parses plan.json, so the hashing costs no time of its own.
    """
    folder = plan_dir(path)
    paths = approved_files(folder)
    raw_plan = _read_approved(PLAN_JSON, paths[PLAN_JSON])
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = pool.submit(_read_and_hash, paths, raw_plan)
        plan = parse_plan(folder, raw_plan)
        del raw_plan  # the thread holds it as long as it needs it
        contents, hashes = hashing.result()
    return PlanFiles(
        folder=folder,
        plan=plan,
        target=parse_target(folder.parent, contents[TARGET]),
        scripts={name: contents[name] for name in (FIX_SQL, ROLLBACK_SQL)},
        hashes=hashes,
    )


def _read_and_hash(
    paths: Mapping[str, Path], raw_plan: bytes
) -> tuple[dict[str, bytes], dict[str, str]]:
    contents: dict[str, bytes] = {}
    hashes: dict[str, str] = {}
    for name, file in paths.items():
        data = raw_plan if name == PLAN_JSON else _read_approved(name, file)
        hashes[name] = hashlib.sha256(data).hexdigest()
        if name != PLAN_JSON:
            contents[name] = data
    return contents, hashes


def _read_approved(name: str, file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"{file.parent} is incomplete: {name} is missing") from None
    except OSError as exc:
        raise PlanError(f"{file} is unreadable: {exc.strerror}") from None


def load_checked_plan(path: str | Path) -> PlanFiles:
    """The plan's files, read once, after checking fix.sql and rollback.sql are exactly
    plan.json's renderings.

    A truncated, emptied or edited script (or a plan.json whose actions no longer
    render to the scripts) is refused: what a person reviews and approves is
    what ``drift apply`` runs.
    """
    files = read_plan_files(path)
    check_scripts(files)
    return files


def check_scripts(files: PlanFiles, operations: Iterable[str] = ("fix", "rollback")) -> Plan:
    """``files.plan``, once fix.sql and rollback.sql (as read with it) are its renderings
    and its actions' statements for ``operations`` are the renderings of their data
    (:func:`check_actions`)."""
    folder, plan = files.folder, files.plan
    check_actions(folder, plan, operations, target=files.target)
    for name, operation in ((FIX_SQL, "fix"), (ROLLBACK_SQL, "rollback")):
        try:
            text = files.scripts[name].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(f"{folder / name} is unreadable: {exc}") from None
        try:
            rendered = render_script(plan, operation)
        except (KeyError, TypeError, ValueError, IndexError, PlanError) as exc:
            raise PlanError(f"{folder / PLAN_JSON} is not a valid plan: {exc!r}") from None
        if text != rendered:
            raise PlanError(
                f"{folder / name} does not match plan.json (truncated or edited); "
                f"re-plan with: drift plan {folder.parent}"
            )
    return plan


@collector_paused()
def check_actions(
    folder: Path,
    plan: Plan,
    operations: Iterable[str] = ("fix", "rollback"),
    target: dict[str, Any] | None = None,
) -> None:
    """Refuse a plan whose actions' data do not render to their stored statements.

    ``drift apply`` builds its statements from each action's data (mode, key,
    before, after, and the entity's table and key); fix.sql and rollback.sql, which
    a person reviews, show the action's stored ``sql`` and ``rollback_sql``. The
    statements of ``operations`` are rendered again from the data, as
    :func:`build_plan` renders them (with the audit's target.json), and must be
    exactly the stored text (~5 µs a statement). ``target`` is the audit's target.json
    as :func:`read_plan_files` read it (read here when not given).
    """
    import sqlalchemy as sa

    fix, back = "fix" in operations, "rollback" in operations
    script = get_script_dialect(plan.dialect)
    if target is None:
        target = read_target(folder.parent)
    tables: dict[str, tuple[Any, list[str]]] = {}
    for a in plan.actions:
        if a.is_manual:
            if a.sql or a.rollback_sql:
                raise _edited(folder, a, "is manual but has SQL")
            continue
        try:
            shape = tables.get(a.entity)
            if shape is None:
                # The table and key drift apply uses are plan.json's; the columns' types
                # are the audit's, as when the plan was written.
                entity = plan.entities[a.entity]
                info = dict(target["entities"][a.entity], name=entity["table"])
                info["schema"] = entity["schema"]
                shape = tables[a.entity] = (offline_table(info), list(entity["key"]))
            step = fix_step(a)
            same = (not fix or a.sql == (_guarded(script, step, *shape),)) and (
                not back or a.rollback_sql == (_guarded(script, _undo(step), *shape),)
            )
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            ArithmeticError,
            PlanError,
            sa.exc.SQLAlchemyError,
        ) as exc:
            raise _edited(
                folder, a, f"does not render to SQL ({type(exc).__name__}: {exc})"
            ) from None
        if not same:
            raise _edited(folder, a, "does not render to its SQL in fix.sql/rollback.sql")


def _edited(folder: Path, action: Action, what: str) -> PlanError:
    return PlanError(
        _comment(
            f"{folder / PLAN_JSON}: the data of action {action.id} ({action.entity} "
            f"{action.key}) {what} (plan.json edited); re-plan with: drift plan {folder.parent}"
        )
    )


def approved_files(path: str | Path) -> dict[str, Path]:
    """The files an approval binds, by the name its hash gives them: the plan's three
    files and the audit's ``target.json`` (the columns and fingerprint the plan was
    written from and its statements are checked against)."""
    folder = plan_dir(path)
    return {name: folder / name for name in PLAN_FILES} | {TARGET: folder.parent / TARGET}


def file_sha256s(path: str | Path) -> dict[str, str]:
    """SHA-256 of each of :func:`approved_files`, in that order."""
    return {
        name: hashlib.sha256(_read_approved(name, file)).hexdigest()
        for name, file in approved_files(path).items()
    }


def combined_sha256(hashes: Mapping[str, str]) -> str:
    """One SHA-256 over named file hashes (the plan's hash, see :func:`plan_sha256`)."""
    digest = hashlib.sha256()
    for name, sha in hashes.items():
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def plan_sha256(path: str | Path, hashes: Mapping[str, str] | None = None) -> str:
    """SHA-256 binding the approved files (plan.json, fix.sql, rollback.sql, target.json).

    Before target.json was bound, the hash covered the first three alone
    (:func:`legacy_plan_sha256`); the two can never be equal.
    """
    return combined_sha256(file_sha256s(path) if hashes is None else hashes)


def legacy_plan_sha256(hashes: Mapping[str, str]) -> str:
    """The hash approvals made before target.json was bound carry."""
    return combined_sha256({name: hashes[name] for name in PLAN_FILES})


def spec_path(path: str | Path) -> Path:
    """The spec copy of the audit a plan belongs to."""
    return plan_dir(path).parent / SPEC_COPY


def iter_keys(actions: Iterable[Action]) -> dict[str, list[tuple[Any, ...]]]:
    """Distinct keys per entity, in plan order."""
    keys: dict[str, dict[str, tuple[Any, ...]]] = {}
    for a in actions:
        keys.setdefault(a.entity, {}).setdefault(a.key, a.key_values)
    return {e: list(k.values()) for e, k in keys.items()}
