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
import webbrowser
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from audit import __version__
from audit.database import redact
from audit.errors import DriftError

app = typer.Typer(
    name="drift",
    help="Audit and remediate state drift caused by racing background workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state: dict[str, Any] = {"debug": False, "quiet": False}


class Format(StrEnum):
    text = "text"
    json = "json"


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
    return redact(shlex.join(["drift", *sys.argv[1:]]), *_secrets(sys.argv[1:]))


# --------------------------------------------------------------------------- audit


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
    # --- incremental audits (docs/incremental.md)
    since_last: Annotated[
        bool,
        typer.Option(
            "--since-last",
            help="Audit only the keys that stream rows touched since the previous "
            "--since-last audit (the first one is a full audit).",
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="State file of --since-last (default: .drift-state.json beside the spec).",
        ),
    ] = None,
    lookback: Annotated[
        float,
        typer.Option(
            "--lookback",
            min=0,
            help="Seconds of stream rows --since-last re-reads for late commits.",
        ),
    ] = 600.0,
) -> None:
    """Dry-run audit: rebuild expected state, diff it, write an audit folder.

    Never writes to the audited database. Exit 0 when nothing drifted, 1 when
    drift was found, 2 on errors.
    """
    import datetime as dt

    from audit import run_audit
    from audit.errors import DriftError

    if state is not None and not since_last:
        raise DriftError("--state only applies to --since-last audits")
    result = run_audit(
        config,
        db=db,
        out=out,
        progress=progress,
        command=command_line(),
        since_last=(state or True) if since_last else False,
        lookback=dt.timedelta(seconds=lookback),
    )
    if format is Format.json:
        typer.echo(json.dumps(result.summary, indent=2, ensure_ascii=False))
    else:
        typer.echo(render_summary(result.summary, result.out_dir))
    raise typer.Exit(1 if result.drift_found else 0)


def render_summary(summary: dict[str, Any], out_dir: Path | None = None) -> str:
    """A short text summary of an audit: counts per entity and column."""
    counts = summary["counts"]
    rows = summary["rows_scanned"]["entities"]
    kinds = ["mismatch", "missing_row", "orphan_row", "duplicate_key", "null_key"]
    header = ["entity / column", "rows", "drifted", *kinds]
    table = [header]
    for entity, entity_rows in rows.items():
        stats = counts["by_entity"].get(entity, {})
        by_kind = stats.get("by_kind", {})
        table.append(
            [
                entity,
                "-" if entity_rows is None else str(entity_rows),
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


# --------------------------------------------------------------------------- report


@app.command()
def report(
    audit_dir: Annotated[Path, typer.Argument(help="An audit folder.")],
    open_: Annotated[bool, typer.Option("--open", help="Open the report in a browser.")] = False,
) -> None:
    """Re-render report.html from an audit folder, without a database."""
    from audit.report import render_report

    path = render_report(audit_dir)
    typer.echo(str(path))
    if open_:
        webbrowser.open(path.resolve().as_uri())


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


# --------------------------------------------------------------------------- entry point


def _secrets(argv: list[str]) -> list[str]:
    """Passwords in URLs on the command line or in the environment."""
    from sqlalchemy.engine import make_url

    found = []
    for text in [*argv, os.environ.get("DRIFT_DATABASE_URL", "")]:
        if "://" not in text:
            continue
        try:
            password = make_url(text.split("=", 1)[-1] if text.startswith("--") else text).password
        except Exception:  # noqa: BLE001 - not a URL, nothing to hide
            continue
        if password:
            found.append(str(password))
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    secrets = _secrets(args)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="drift", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except DriftError as err:
        if _state["debug"]:
            raise
        typer.echo(f"drift: {redact(str(err), *secrets)}", err=True)
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
            typer.echo(f"drift: {redact(err.format_message(), *secrets)}", err=True)
            return 2
        if _state["debug"]:
            raise
        message = redact(f"{kind}: {err}", *secrets).splitlines()[0]
        typer.echo(
            f"drift: internal error: {message} (rerun with --debug for the traceback)", err=True
        )
        return 2
    finally:
        _state["debug"] = False
        _state["quiet"] = False


if __name__ == "__main__":
    sys.exit(main())
