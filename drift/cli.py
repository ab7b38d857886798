"""The ``drift`` command: a thin front door over the Python API.

Commands parse their options, call the API, print, and map the outcome to an
exit code. No audit or remediation logic lives here.

Exit codes:

* 0 -- no drift found / the command succeeded
* 1 -- drift found (``audit``, ``verify``) or a threshold crossed (``check``)
* 2 -- a usage, spec, database or output error; nothing was changed
* 130 -- interrupted (Ctrl-C)

Errors are one line on stderr, prefixed ``drift:``; ``--debug`` shows the
traceback instead. A database password never appears in any output.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from audit import __version__
from audit.errors import DriftError

if TYPE_CHECKING:
    from audit.check import Thresholds

app = typer.Typer(
    name="drift",
    help="Audit and remediate state drift caused by racing background workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state: dict[str, Any] = {"debug": False, "quiet": False, "secrets": []}


class Format(StrEnum):
    text = "text"
    json = "json"


def _redact(text: str, *secrets: str | None) -> str:
    # Imported on use: audit.database brings SQLAlchemy, which --help does not need.
    from audit.database import redact

    return redact(text, *secrets)


def _freeze_imports() -> None:
    """Exempt the objects alive now (mostly imported modules) from garbage collection.

    Only for the short-lived ``drift`` process (:func:`entry`): each full collection
    would otherwise walk SQLAlchemy's and pyarrow's objects again (~0.05 s apiece).
    """
    if _state.get("executable"):
        import gc

        gc.freeze()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"drift {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Audit and remediate state drift caused by racing background workers.

    Exit codes: 0 no drift, 1 drift found, 2 error (nothing changed), 130 interrupted.
    """
    _state["debug"] = debug
    _state["quiet"] = quiet


def progress(message: str) -> None:
    """Progress of long steps, on stderr."""
    if not _state["quiet"]:
        typer.echo(f"drift: {message}...", err=True)


def command_line() -> str:
    """The command line as typed, with secrets masked (for the report's footer)."""
    return _redact(shlex.join(["drift", *sys.argv[1:]]), *_secrets(sys.argv[1:]))


# --------------------------------------------------------------------------- audit

# Incremental audits (docs/incremental.md), shared by audit and check.
SinceLast = Annotated[
    bool,
    typer.Option(
        "--since-last",
        help="Audit only the keys that stream rows touched since the previous "
        "--since-last audit (the first one is a full audit).",
    ),
]
StateFile = Annotated[
    Path | None,
    typer.Option(
        "--state", help="State file of --since-last (default: .drift-state.json beside the spec)."
    ),
]
Lookback = Annotated[
    float,
    typer.Option(
        "--lookback", min=0, help="Seconds of stream rows --since-last re-reads for late commits."
    ),
]

Jobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        help="Diff this many entities at once (PostgreSQL: parallel connections sharing "
        "the audit's snapshot; other databases diff one at a time).",
    ),
]


def _incremental(since_last: bool, state: Path | None, lookback: float) -> dict[str, Any]:
    """run_audit's incremental options from the command line's."""
    import datetime as dt

    from audit.errors import DriftError

    if state is not None and not since_last:
        raise DriftError("--state only applies to --since-last audits")
    return {
        "since_last": (state or True) if since_last else False,
        "lookback": dt.timedelta(seconds=lookback),
    }


@app.command()
def audit(
    config: Annotated[Path, typer.Option("--config", "-c", help="The spec file (drift.toml).")],
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (overrides the spec and DRIFT_DATABASE_URL)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Audit folder to create (default: ./drift-audit-<timestamp>)."
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Summary format.")] = Format.text,
    stuck_after: Annotated[
        str,
        typer.Option(
            "--stuck-after",
            help="An outbox message unpublished for longer is stuck (e.g. 90s, 5m, 2h).",
        ),
    ] = "5m",
    since_last: SinceLast = False,
    state: StateFile = None,
    lookback: Lookback = 600.0,
    jobs: Jobs = 1,
) -> None:
    """Dry-run audit: rebuild expected state, diff it, write an audit folder.

    Never writes to the audited database. Exit 0 when nothing drifted, 1 when
    drift was found, 2 on errors.
    """
    from audit import run_audit

    _freeze_imports()
    result = run_audit(
        config,
        db=db,
        out=out,
        progress=progress,
        command=command_line(),
        stuck_after=_duration(stuck_after, "--stuck-after"),
        jobs=jobs,
        **_incremental(since_last, state, lookback),
    )
    if format is Format.json:
        typer.echo(json.dumps(result.summary, indent=2, ensure_ascii=False))
    else:
        typer.echo(render_summary(result.summary, result.out_dir))
    raise typer.Exit(1 if result.drift_found else 0)


def _duration(text: str, option: str):  # type: ignore[no-untyped-def]
    from audit.outbox import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def render_summary(summary: dict[str, Any], out_dir: Path | None = None) -> str:
    """A short text summary of an audit: counts per entity and column."""
    counts = summary["counts"]
    rows = summary["rows_scanned"]["entities"]
    estimated = set(summary["rows_scanned"].get("estimated", {}).get("entities", ()))
    kinds = ["mismatch", "missing_row", "orphan_row", "duplicate_key", "null_key"]
    header = ["entity / column", "rows", "drifted", *kinds]
    table = [header]
    for entity, entity_rows in rows.items():
        stats = counts["by_entity"].get(entity, {})
        by_kind = stats.get("by_kind", {})
        table.append(
            [
                entity,
                "-"
                if entity_rows is None
                else f"{'~' if entity in estimated else ''}{entity_rows}",
                str(stats.get("drifted_rows", 0)),
                *(str(by_kind.get(k, 0)) for k in kinds),
            ]
        )
        for column, n in stats.get("by_column", {}).items():
            table.append([f"  .{column}", "", "", str(n), *([""] * (len(kinds) - 1))])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    total = counts["total"]
    lines.append(
        f"drift: {total} finding(s) in {counts['drifted_rows']} drifted row(s)"
        if total
        else "drift: no drift found"
    )
    lines.append("")
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(_attribution_lines(summary))
    if "incremental" in summary:
        since = summary["incremental"]["since"]
        lines.append(
            f"incremental: keys touched by stream rows after the audit of {since['taken_at']}"
        )
    for name, mark in summary.get("watermarks", {}).items():
        lines.append(f"watermark {name}: {', '.join(mark['order_by'])} = {mark['value']}")
    if out_dir is not None:
        lines.append("")
        lines.append(f"report:   {out_dir / 'report.html'}")
        lines.append(f"findings: {out_dir / 'findings.parquet'}")
    return "\n".join(lines)


def _attribution_lines(summary: dict[str, Any]) -> list[str]:
    """Causes, outbox findings and the job to fix first (attribution)."""
    counts = summary["counts"]
    lines = []
    if counts.get("by_cause"):
        causes = ", ".join(f"{k} {v}" for k, v in counts["by_cause"].items())
        lines.append(f"causes: {causes}")
    outbox = {
        k: v
        for k, v in counts.get("by_kind", {}).items()
        if k
        in (
            "unannounced_event",
            "duplicate_announcement",
            "stuck_message",
            "orphan_message",
            "witness_disagreement",
        )
    }
    if outbox:
        lines.append("outbox and witnesses: " + ", ".join(f"{k} {v}" for k, v in outbox.items()))
    fix = summary.get("fix_first")
    if fix:
        lines.append(f"fix first: {fix['reason']}")
    return ([""] + lines) if lines else []


# --------------------------------------------------------------------------- report


@app.command()
def report(
    audit_dir: Annotated[Path, typer.Argument(help="An audit folder.")],
    open_: Annotated[bool, typer.Option("--open", help="Open the report in a browser.")] = False,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            min=1,
            help="How many findings the report embeds (the rest are "
            "in findings.parquet and findings.csv).",
        ),
    ] = 2000,
) -> None:
    """Re-render report.html from an audit folder, without a database.

    Also writes findings.csv when the folder has none.
    """
    from audit.report import render_report

    path = render_report(audit_dir, limit=top)
    typer.echo(str(path))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


# --------------------------------------------------------------------------- check


class CheckFormat(StrEnum):
    text = "text"
    json = "json"
    prometheus = "prometheus"


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c", help="The spec file (drift.toml).")],
    db: Annotated[str | None, typer.Option("--db", help="Database URL.")] = None,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=0, help="Drifted rows tolerated (default 0).")
    ] = 0,
    max_abs_delta: Annotated[
        float | None,
        typer.Option("--max-abs-delta", min=0, help="Total |expected - actual| tolerated."),
    ] = None,
    format: Annotated[
        CheckFormat, typer.Option("--format", "-f", help="Output format.")
    ] = CheckFormat.text,
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile",
            help="Also write the Prometheus metrics to this file, "
            "atomically (node exporter textfile collector).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Keep the audit folder here.")
    ] = None,
    since_last: SinceLast = False,
    state: StateFile = None,
    lookback: Lookback = 600.0,
    jobs: Jobs = 1,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            help="Check again every DURATION (e.g. 30s, 1m) until stopped (SIGTERM: exit 0): "
            "one line per check, text or JSON; a check that fails is reported and the next "
            "one runs.",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="With --every: stop after this many checks."),
    ] = None,
) -> None:
    """Drift alert: audit, then exit 1 when a threshold is crossed (0 otherwise, 2 on error).

    For cron and monitoring; the audit is a dry run, as with `drift audit`.
    """
    from audit.check import (
        Thresholds,
        render_json,
        render_prometheus,
        render_text,
        run_check,
        write_textfile,
    )

    options = {**_incremental(since_last, state, lookback), "jobs": jobs}
    thresholds = Thresholds(max_rows, max_abs_delta)
    if every is not None or count is not None:
        interval = _watch_options(every, count, format, out)
        _freeze_imports()
        raise typer.Exit(_watch(config, db, thresholds, interval, count, format, textfile, options))
    _freeze_imports()
    result = run_check(
        config,
        db=db,
        thresholds=thresholds,
        out=out,
        progress=progress,
        audit_options=options,
    )
    renderers = {
        CheckFormat.text: render_text,
        CheckFormat.json: render_json,
        CheckFormat.prometheus: render_prometheus,
    }
    typer.echo(renderers[format](result).rstrip("\n"))
    if textfile is not None:
        write_textfile(textfile, render_prometheus(result))
    raise typer.Exit(1 if result.crossed else 0)


def _watch_options(
    every: str | None, count: int | None, format: CheckFormat, out: Path | None
) -> float:
    if every is None:
        raise DriftError("--count only applies with --every")
    if out is not None:
        raise DriftError("--out keeps one audit folder: it does not apply with --every")
    if format is CheckFormat.prometheus:
        raise DriftError(
            "--every prints one line per check (--format text or json); "
            "use --textfile for the Prometheus metrics"
        )
    seconds = float(_duration(every, "--every").total_seconds())
    if seconds <= 0:
        raise typer.BadParameter("must be longer than 0 s", param_hint="--every")
    return seconds


def _watch(
    config: Path,
    db: str | None,
    thresholds: Thresholds,
    every: float,
    count: int | None,
    format: CheckFormat,
    textfile: Path | None,
    options: dict[str, Any],
) -> int:
    """``drift check --every``: one stdout line per check; the exit code of the last one.

    SIGTERM (a service manager stopping it) ends the loop cleanly with exit 0: the
    check under way is abandoned as Ctrl-C would (its snapshot rolled back, its
    scratch folder removed, the incremental marks not moved).
    """
    import datetime as dt
    import signal
    import threading

    from audit.check import render_json, render_prometheus, render_text, watch, write_textfile

    stopped: list[int] = []
    writing: list[bool] = []

    def stop(signum: int, frame: object) -> None:
        # Python runs this in the main thread whichever thread the kernel picked, so a
        # flag holds it off where a signal mask would not (the mask is per thread).
        stopped.append(signum)
        if not writing:
            raise KeyboardInterrupt

    # Only the main thread may set a handler (main() may run in another thread of a program).
    handles = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if handles else None
    code = 0
    try:
        for tick in watch(
            config,
            db,
            thresholds,
            every=every,
            count=count,
            progress=progress,
            audit_options=options,
        ):
            at = dt.datetime.fromtimestamp(tick.started_at, dt.UTC).isoformat(
                timespec="milliseconds"
            )
            error = _redact(str(tick.error), *_state["secrets"]) if tick.error else None
            if format is CheckFormat.json:
                record: dict[str, Any] = {"check": tick.number, "started_at": at}
                record["seconds"] = round(tick.seconds, 4)
                record["skipped"] = tick.skipped
                if tick.result is not None:
                    record.update(json.loads(render_json(tick.result)))
                else:
                    record["error"] = error
                typer.echo(json.dumps(record, ensure_ascii=False))
            elif tick.result is not None:
                late = f", {tick.skipped} start(s) skipped" if tick.skipped else ""
                typer.echo(f"{at} {render_text(tick.result)} ({tick.seconds:.2f} s{late})")
            else:
                typer.echo(f"{at} drift check ERROR: {error}")
            if tick.result is not None and textfile is not None:
                # A SIGTERM waits until the file is in place (no half-written temp file).
                writing.append(True)
                try:
                    write_textfile(textfile, render_prometheus(tick.result))
                except DriftError as err:
                    typer.echo(f"drift: {err}", err=True)
                finally:
                    writing.clear()
                if stopped:
                    raise KeyboardInterrupt
            if tick.error is not None:
                code = tick.error.exit_code
            else:
                code = 1 if tick.result is not None and tick.result.crossed else 0
    except KeyboardInterrupt:
        if not stopped:
            raise
        typer.echo("drift: stopped (SIGTERM)", err=True)
        return 0
    finally:
        if handles:
            signal.signal(signal.SIGTERM, previous)
    return code


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for the demo shop.")] = Path(
        "drift-demo"
    ),
) -> None:
    """Build a SQLite shop where workers raced, audit it, and show what drift found."""
    from audit import run_audit
    from drift.demo import build_demo

    progress(f"building the demo shop in {dir}")
    shop = build_demo(dir)
    out = shop.folder / "audit"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    result = run_audit(
        shop.spec,
        out=out,
        progress=progress,
        command=f"drift audit -c {shlex.quote(str(shop.spec))}",
    )
    typer.echo(render_summary(result.summary, result.out_dir))
    typer.echo("")
    typer.echo("What happened in the shop (the demo staged these races):")
    for key, story in shop.races.items():
        typer.echo(f"  {key}: {story}")
    spec = shlex.quote(str(shop.spec))
    typer.echo("")
    typer.echo("Try next:")
    typer.echo(f"  open {shlex.quote(str(result.report_path))}")
    typer.echo(f"  drift audit -c {spec} --out my-audit")
    typer.echo(f"  drift audit -c {spec} --format json")


# --------------------------------------------------------------------------- remediation
# plan, approve, apply, verify, rollback: thin wrappers over remediate/.


@app.command()
def plan(
    audit_dir: Annotated[Path, typer.Argument(help="An audit folder.")],
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", help="ENTITY.COLUMN=delta|cas (repeatable)."),
    ] = None,
    cas: Annotated[bool, typer.Option("--cas", help="Use cas for every column.")] = False,
    delete_orphans: Annotated[
        bool, typer.Option("--delete-orphans", help="Plan guarded DELETEs for orphan rows.")
    ] = False,
) -> None:
    """Re-plan an audit with other options (offline; replaces plan/ and its approvals)."""
    from audit.errors import PlanError
    from remediate.plan import PlanOptions, build_plan, write_plan

    modes = {}
    for item in mode or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise PlanError(f"--mode {item}: write ENTITY.COLUMN=delta or ENTITY.COLUMN=cas")
        modes[name.strip()] = value.strip()
    options = PlanOptions(modes=modes, all_cas=cas, delete_orphans=delete_orphans)
    built = build_plan(audit_dir, options)
    folder = write_plan(audit_dir, built)
    typer.echo(_plan_text(built, folder))


def _plan_text(built: Any, folder: Path) -> str:
    manual = [a for a in built.actions if a.is_manual]
    by_mode: dict[str, int] = {}
    for a in built.actions:
        by_mode[a.mode] = by_mode.get(a.mode, 0) + 1
    modes = ", ".join(f"{n} {m}" for m, n in sorted(by_mode.items())) or "nothing to do"
    lines = [f"plan {built.plan_id}: {len(built.actions)} action(s) ({modes})"]
    for a in manual:
        lines.append(f"  manual: action {a.id} {a.entity} {a.key}: {a.manual_reason}")
    lines.append(f"plan:     {folder / 'plan.json'}")
    lines.append(f"fix:      {folder / 'fix.sql'}")
    lines.append(f"rollback: {folder / 'rollback.sql'}")
    lines.append(f"next:     drift approve {folder} --by NAME")
    return "\n".join(lines)


@app.command()
def approve(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="A plan (or audit) folder.")],
    by: Annotated[str, typer.Option("--by", help="Who approves.")],
    note: Annotated[str | None, typer.Option("--note", help="Why.")] = None,
    rollback_: Annotated[
        bool, typer.Option("--rollback", help="Approve the rollback instead of the fix.")
    ] = False,
) -> None:
    """Approve a plan's current files (bound to their SHA-256; HMAC with DRIFT_APPROVAL_KEY)."""
    from remediate.approval import approve as record

    approval = record(plan_path, by, note, "rollback" if rollback_ else "fix")
    signed = " (signed)" if approval.hmac else ""
    typer.echo(
        f"approved{signed} for {approval.purpose} by {approval.by}: "
        f"plan sha256 {approval.plan_sha256}"
    )


def _apply_text(result: Any) -> str:
    verb = "would change" if result.dry_run else "changed"
    lines = [
        f"{result.operation} {result.plan_id}: {verb} {result.rows_changed} row(s)"
        + (f", {result.manual} manual action(s) left" if result.manual else "")
        + (f", {result.batches_skipped} batch(es) resumed" if result.batches_skipped else "")
    ]
    for c in result.changes:
        column = f".{c['column']}" if c["column"] else ""
        lines.append(
            f"  action {c['action_id']}: {c['entity']} {c['key']}{column} "
            f"{_short(c['before'])} -> {_short(c['after'])}"
        )
    for f in result.guard_failures:
        column = f".{f['column']}" if f["column"] else ""
        lines.append(
            f"  guard would fail: action {f['action_id']}: {f['entity']} {f['key']}{column}: "
            f"{f['reason']}"
        )
    if result.dry_run:
        lines.append("dry run: everything was rolled back")
    return "\n".join(lines)


def _short(value: Any) -> str:
    from audit.findings import to_json

    text = to_json(value)
    return text if len(text) <= 80 else text[:77] + "..."


ApplyDb = Annotated[str, typer.Option("--db", help="The target database URL.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Do everything, report, roll back.")]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", help="Commit every N actions (resumable).")
]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for a row lock.")
]
Require = Annotated[int, typer.Option("--require", help="Approvers needed.")]
TargetOverride = Annotated[
    str | None,
    typer.Option("--target-override", help="Apply to another target; the reason is logged."),
]


@app.command()
def apply(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="A plan (or audit) folder.")],
    db: ApplyDb,
    dry_run: DryRun = False,
    batch_size: BatchSize = None,
    lock_timeout: LockTimeout = 5.0,
    require: Require = 1,
    target_override: TargetOverride = None,
) -> None:
    """Apply an approved plan: guarded, transactional, verified before commit."""
    from remediate.apply import apply_plan

    _run_apply(
        apply_plan, plan_path, db, dry_run, batch_size, lock_timeout, require, target_override
    )


@app.command()
def verify(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="A plan (or audit) folder.")],
    db: ApplyDb,
) -> None:
    """Re-audit the plan's keys: exit 0 when the drift it targeted is gone, 1 otherwise."""
    from remediate.verify import verify_plan

    result = verify_plan(plan_path, db)
    if result.clean:
        typer.echo(
            f"verify {result.plan_id}: the drift the plan fixed is gone "
            f"({result.checked_keys} key(s) checked)"
        )
    else:
        typer.echo(
            f"verify {result.plan_id}: {len(result.remaining)} targeted finding(s) remain "
            f"in {result.checked_keys} key(s)"
        )
    for f in result.remaining:
        typer.echo(_finding_line(f))
    if result.manual:
        typer.echo(f"{len(result.manual)} finding(s) left to a person by manual actions:")
        for f in result.manual:
            typer.echo(_finding_line(f))
    raise typer.Exit(0 if result.clean else 1)


def _finding_line(f: Any) -> str:
    column = f".{f.column}" if f.column else ""
    return f"  {f.entity} {f.key_json}{column}: {f.kind}"


@app.command()
def rollback(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="A plan (or audit) folder.")],
    db: ApplyDb,
    dry_run: DryRun = False,
    batch_size: BatchSize = None,
    lock_timeout: LockTimeout = 5.0,
    require: Require = 1,
    target_override: TargetOverride = None,
) -> None:
    """Undo an applied plan (needs its own approval: drift approve PLAN --rollback)."""
    from remediate.apply import rollback_plan

    _run_apply(
        rollback_plan, plan_path, db, dry_run, batch_size, lock_timeout, require, target_override
    )


def _run_apply(
    operation: Any,
    plan_path: Path,
    db: str,
    dry_run: bool,
    batch_size: int | None,
    lock_timeout: float,
    require: int,
    target_override: str | None,
) -> None:
    """apply and rollback: call the API, print what changed; exit 1 when a dry run's guard
    would fail."""
    result = operation(
        plan_path,
        db,
        dry_run=dry_run,
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        require=require,
        target_override=target_override,
        progress=progress,
    )
    typer.echo(_apply_text(result))
    raise typer.Exit(1 if result.dry_run and result.guard_failures else 0)


# --------------------------------------------------------------------------- entry point


def _secrets(argv: list[str]) -> list[str]:
    """Passwords in URLs on the command line or in the environment."""
    found = []
    for text in [*argv, os.environ.get("DRIFT_DATABASE_URL", "")]:
        if "://" not in text:
            continue
        from sqlalchemy.engine import make_url

        try:
            password = make_url(text.split("=", 1)[-1] if text.startswith("--") else text).password
        except Exception:  # noqa: BLE001 - not a URL, nothing to hide
            continue
        if password:
            found.append(str(password))
    return found


def entry() -> None:
    """The ``drift`` executable and ``python -m drift``."""
    # pyarrow imports pandas (about 0.2 s and 45 MB) the first time it converts a Python
    # value, only to ask whether the value is a pandas object. drift never uses pandas, so
    # the command tells pyarrow there is none. Not in main(): a program that calls main()
    # may use pandas itself.
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    # Arrow's own allocator keeps freed memory for reuse: with the system's, the peak RSS of
    # an audit at 1M stream rows is ~35 MB lower and no slower (docs/benchmarks.md).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    _state["executable"] = True
    _exit(main())


def _exit(code: int) -> None:
    """End the ``drift`` process with ``code``, without tearing the interpreter down.

    Freeing every module and object of SQLAlchemy, pyarrow and a driver takes
    ~0.1 s, paid by every command (a tenth of an incremental audit from a new
    process). By now every file drift wrote is closed and every connection
    disposed; the exit handlers still run and the standard streams are flushed.
    Where that cannot be done cleanly (a thread still running, a stream that
    fails to flush) the interpreter exits as usual and reports it; so it does
    under a profiler or tracer (pyinstrument, cProfile, coverage), which reports
    after the program returns.
    """
    import atexit
    import threading

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


class _WithoutPandas:
    """An import hook under which ``import pandas`` fails (see :func:`entry`)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("the drift command runs without pandas", name=name)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    secrets = _secrets(args)
    _state["secrets"] = secrets
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="drift", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except DriftError as err:
        if _state["debug"]:
            raise
        typer.echo(f"drift: {_redact(str(err), *secrets)}", err=True)
        return err.exit_code
    except KeyboardInterrupt:
        typer.echo("drift: interrupted", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that catches everything
        # click may be vendored by typer: recognise its exceptions by shape.
        kind = type(err).__name__
        if kind == "Exit" and hasattr(err, "exit_code"):
            return int(err.exit_code)
        if kind == "Abort":
            typer.echo("drift: interrupted", err=True)
            return 130
        if kind == "NoArgsIsHelpError":
            typer.echo(err.format_message())  # type: ignore[attr-defined]
            return 2
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            ctx = getattr(err, "ctx", None)
            if ctx is not None:
                typer.echo(ctx.get_usage(), err=True)
            typer.echo(f"drift: {_redact(err.format_message(), *secrets)}", err=True)
            return 2
        if _state["debug"]:
            raise
        message = _redact(f"{kind}: {err}", *secrets).splitlines()[0]
        typer.echo(
            f"drift: internal error: {message} (rerun with --debug for the traceback)", err=True
        )
        return 2
    finally:
        _state["debug"] = False
        _state["quiet"] = False
        _state["secrets"] = []


if __name__ == "__main__":
    sys.exit(main())
