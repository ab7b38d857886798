"""Running an audit: bind the spec, open one snapshot, diff every entity, write the folder.

This is the Python API behind ``drift audit``::

    from audit import run_audit
    result = run_audit("drift.toml", db="postgresql://...", out="incident-42")
    result.drift_found, result.summary["counts"]["by_kind"]

The audit never writes to the audited database: every read happens inside one
read-only snapshot transaction that is rolled back at the end.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url

from audit import __version__
from audit.attribution import attribute, evidence_checks
from audit.database import create_engine, database_errors, mask_url, redact, resolve_url
from audit.dialects import Dialect, get_dialect
from audit.diff import build_diff, run_diff
from audit.errors import DatabaseError, DriftError, OutputError, SpecError
from audit.findings import Finding, FindingsWriter, iso
from audit.incremental import DEFAULT_LOOKBACK, IncrementalState, Scope
from audit.outbox import DEFAULT_STUCK_AFTER
from audit.output import AuditFolder
from audit.rebuild import KeyFilter
from audit.schema import BoundSpec, BoundStream, bind_spec
from audit.spec import Spec, load_spec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AuditResult:
    """What an audit found, and where it wrote it."""

    out_dir: Path
    summary: dict[str, Any]

    @property
    def findings_path(self) -> Path:
        return self.out_dir / "findings.parquet"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"

    @property
    def finding_count(self) -> int:
        return int(self.summary["counts"]["total"])

    @property
    def drift_found(self) -> bool:
        return self.finding_count > 0


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 4)


def run_audit(
    spec: Spec | str | Path,
    db: str | None = None,
    out: str | Path | None = None,
    *,
    only_keys: Mapping[str, KeyFilter] | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    write_report: bool = True,
    stuck_after: dt.timedelta = DEFAULT_STUCK_AFTER,
    since_last: bool | str | Path = False,
    lookback: dt.timedelta | None = None,
    jobs: int = 1,
    findings_only: bool = False,
) -> AuditResult:
    """Audit the database described by ``spec`` and write an audit folder.

    ``db`` overrides the spec's URL (as ``--db`` does). ``only_keys`` restricts
    the audit to some keys per entity (used by verify). ``stuck_after`` is how
    long an outbox message may stay unpublished (``--stuck-after``).
    ``since_last`` makes it incremental (see :mod:`audit.incremental`): True
    for the default state file beside the spec, or a state file path;
    ``lookback`` overrides how far back it re-reads streams for late commits.
    ``jobs`` > 1 diffs that many entities at once on PostgreSQL, each on its own
    connection joined to the audit's snapshot (other databases diff one at a time).
    ``findings_only`` writes only summary.json and findings.parquet: no evidence,
    target, CSV, plan or report (``drift check``'s throw-away folder).
    Raises a
    :class:`~audit.errors.DriftError` subclass on any problem, before anything
    is written.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    if jobs < 1:
        raise DriftError(f"jobs must be at least 1 (got {jobs})")
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if since_last is not False and only_keys is not None:
        raise DriftError("an audit is either incremental (since_last) or restricted (only_keys)")
    url, _ = resolve_url(db, spec.database_url, spec.base_dir)
    # --- incremental audits (audit/incremental.py): read the state before anything runs
    state = _incremental_state(spec, url, since_last, lookback)
    folder = AuditFolder.create(out)
    write_report = write_report and not findings_only
    try:
        try:
            summary = _audit(
                spec,
                url,
                folder,
                only_keys,
                say,
                started,
                stuck_after,
                state,
                jobs,
                write_report,
                findings_only,
            )
        except SpecError as err:
            # Name the spec file, as parse errors do.
            raise SpecError(f"{spec.path.name}: {err}" if spec.path else str(err)) from None
        secrets = (url.password, _password(spec.database_url))
        summary["command"] = redact(command, *secrets) if command else None
        folder.write_summary(summary)
        if not findings_only:
            _write_the_rest(folder, redact(spec.text, *secrets), say)
        if write_report:
            from audit.report import render_report

            say("rendering the report")
            render_report(folder.staging, folder_name=folder.path.name)
        folder.commit()
    except OSError as err:
        folder.abandon()
        raise OutputError(
            f"cannot write the audit folder {folder.path}: {err.strerror or err}"
        ) from err
    except OutputError as err:
        folder.abandon()
        # Name the folder the user asked for, not the hidden staging folder.
        raise OutputError(str(err).replace(str(folder.staging), str(folder.path))) from err
    except BaseException:
        folder.abandon()
        raise
    if state is not None:
        # Only a successful audit moves the marks forward.
        state.record(summary["snapshot"]["taken_at"], summary["watermarks"])
    return AuditResult(out_dir=folder.path, summary=summary)


def _write_the_rest(folder: AuditFolder, spec_text: str, say: Progress) -> None:
    """The spec copy, findings.csv and the proposed plan (report.html comes after)."""
    folder.write_spec(spec_text)
    from audit.export import write_findings_csv

    write_findings_csv(folder.staging)
    # --- remediation hook (remediate/plan.py): the proposed plan in plan/.
    from remediate.plan import propose_plan

    say("writing the proposed remediation plan")
    propose_plan(folder.staging, folder.path.name)
    # --- end of remediation hook


def _incremental_state(
    spec: Spec, url: URL, since_last: bool | str | Path, lookback: dt.timedelta | None
) -> IncrementalState | None:
    if since_last is False:
        return None
    path = None if since_last is True else Path(since_last)
    return IncrementalState.open(
        spec, url, path, DEFAULT_LOOKBACK if lookback is None else lookback
    )


def _audit(
    spec: Spec,
    url: URL,
    folder: AuditFolder,
    only_keys: Mapping[str, KeyFilter] | None,
    say: Progress,
    started: float,
    stuck_after: dt.timedelta = DEFAULT_STUCK_AFTER,
    state: IncrementalState | None = None,
    jobs: int = 1,
    write_report: bool = True,
    findings_only: bool = False,
) -> dict[str, Any]:
    timer = _Timer()
    scope: Scope | None = None
    later: _LaterSteps | None = None
    dialect = get_dialect(url.get_backend_name())
    if url.get_backend_name() == "sqlite":
        _require_sqlite_file(url)
    engine = create_engine(url)
    try:
        with database_errors(url, "cannot connect"):
            conn = engine.connect()
        try:
            t = time.perf_counter()
            say(f"reading the schema of {len(spec.streams) + len(spec.entities)} table(s)")
            with database_errors(url, "cannot read the schema"):
                bound = bind_spec(spec, conn)
                conn.rollback()
            timer.measure("schema", t)

            t = time.perf_counter()
            with database_errors(url, "cannot open a snapshot"):
                conn = dialect.open_snapshot(conn)
                snapshot_at = dialect.snapshot_time(conn)
            timer.measure("snapshot", t)

            # Loads what the steps after the diffs need while the database counts and diffs.
            later = _LaterSteps(write_report, findings_only)
            with database_errors(url, "audit failed"):
                t = time.perf_counter()
                say("reading stream watermarks")
                if state is not None:
                    scope = state.scope(conn, bound)
                    if scope is not None:
                        only_keys = scope.only_keys
                # An incremental audit must not count whole tables.
                rows = _RowCounter(conn, dialect) if scope is None else None
                watermarks = {
                    name: _watermark(conn, stream, rows) for name, stream in bound.streams.items()
                }
                entity_rows = {
                    name: rows.count(entity.table) if rows else None
                    for name, entity in bound.entities.items()
                }
                timer.measure("watermarks", t)
                writer = FindingsWriter(folder.staging / "findings.parquet")
                try:
                    diffs = _EntityDiffs(bound, dialect, only_keys, timer, say)
                    if jobs > 1 and len(diffs.entities) > 1 and dialect.shares_snapshot:
                        diffs.write_parallel(writer, conn, engine, url, jobs)
                    else:
                        if jobs > 1 and not dialect.shares_snapshot:
                            say(
                                f"--jobs {jobs}: {dialect.name} cannot share a snapshot between "
                                "connections; diffing one entity at a time"
                            )
                        diffs.write_sequential(writer, conn)
                    later.wait()
                    # attribution: witnesses and outbox checks (audit/attribution.py)
                    t = time.perf_counter()
                    writer.add_all(
                        evidence_checks(
                            conn, bound, dialect, snapshot_at, only_keys, stuck_after, say
                        )
                    )
                    timer.measure("witnesses_and_outboxes", t)
                finally:
                    writer.close()
                if not findings_only:
                    _read_the_rest(conn, bound, url, folder, timer, say)
        finally:
            if later is not None:
                later.wait()
            try:
                conn.rollback()
            finally:
                conn.close()
    finally:
        engine.dispose()
    timer.timings["total"] = round(time.perf_counter() - started, 4)
    return _summary(
        spec,
        url,
        bound,
        dialect.snapshot_isolation,
        snapshot_at,
        watermarks,
        entity_rows,
        writer,
        timer,
        only_keys,
        stuck_after,
        scope,
        rows.estimated if rows else set(),
    )


def _read_the_rest(
    conn: Connection, bound: BoundSpec, url: URL, folder: AuditFolder, timer: _Timer, say: Progress
) -> None:
    """What the folder needs beyond the findings, read inside the audit's snapshot."""
    # -- evidence (audit/evidence.py): stream rows behind the top drifted keys
    from audit.evidence import collect_evidence

    t = time.perf_counter()
    say("collecting stream evidence for the drifted keys")
    collect_evidence(conn, bound, folder.staging)
    timer.measure("evidence", t)
    # -- end evidence
    # --- remediation hook (remediate/target.py): fingerprint, entity
    # columns and orphan rows, read inside this snapshot.
    from remediate.target import capture_target

    capture_target(conn, bound, url, folder.staging)
    # --- end of remediation hook


class _LaterSteps:
    """Imports the steps after the diffs, in a thread, while the database computes them.

    Row counts and full diffs are mostly a wait for the database, during which
    Python is idle: pyarrow, the evidence, plan and report modules and their
    compiled templates load meanwhile (~0.15 s of imports). The audit calls
    :meth:`wait` after the diffs. Until then the only import it may make is
    pyarrow's (when a diff's findings fill a batch), and pyarrow imports nothing
    of drift's, so neither thread can wait on a module the other is half-way
    through. A failure here is ignored: the step that needs the module imports it
    again and reports the error.
    """

    def __init__(self, report: bool, findings_only: bool = False) -> None:
        self.thread = threading.Thread(
            target=self._load, args=(report, findings_only), name="drift-preload", daemon=True
        )
        self.thread.start()

    @staticmethod
    def _load(report: bool, findings_only: bool) -> None:
        try:
            # findings.parquet's writer first: a diff with many findings needs it soonest.
            import pyarrow.parquet  # noqa: F401

            if findings_only:
                return
            import audit.evidence
            import audit.export
            import audit.witness
            import remediate.plan  # noqa: F401 - imported for later
            from audit.templating import html_environment, sql_environment

            sql_environment().get_template("remediation.sql.j2")
            if report:
                import audit.report  # noqa: F401

                env = html_environment()
                for name in env.list_templates(filter_func=_report_template):
                    env.get_template(name)
            # pyarrow looks for numpy.ma when it first converts a numpy array (the ranking).
            import numpy.ma  # noqa: F401
        except Exception:  # noqa: BLE001, S110 - the step itself will import and say why
            pass

    def wait(self) -> None:
        self.thread.join()


def _report_template(name: str) -> bool:
    return name == "report.html.j2" or name.startswith("report/")


class _EntityDiffs:
    """Each entity's diff and attribution, one after another or in parallel."""

    def __init__(
        self,
        bound: BoundSpec,
        dialect: Dialect,
        only_keys: Mapping[str, KeyFilter] | None,
        timer: _Timer,
        say: Progress,
    ) -> None:
        self.bound, self.dialect, self.timer, self.say = bound, dialect, timer, say
        self.entities: dict[str, KeyFilter | None] = {}
        for name in bound.entities:
            keys = None if only_keys is None else only_keys.get(name, [])
            if isinstance(keys, list | tuple) and not keys:
                continue  # a restricted audit with no key of this entity
            self.entities[name] = keys

    def findings(self, conn: Connection, name: str) -> Iterator[Finding]:
        entity = self.bound.entities[name]
        self.say(
            f"rebuilding {name} ({len(entity.columns)} column(s) from "
            f"{len(entity.spec.streams)} stream(s)) and diffing in the database"
        )
        diff = build_diff(self.bound, entity, self.dialect, self.entities[name])
        # attribution: causes and evidence from job logs (audit/attribution.py)
        return attribute(conn, self.bound, entity, run_diff(conn, self.bound, diff, self.dialect))

    def write_sequential(self, writer: FindingsWriter, conn: Connection) -> None:
        for name in self.entities:
            t = time.perf_counter()
            writer.add_all(self.findings(conn, name))
            self.timer.measure(f"entity:{name}", t)

    def write_parallel(
        self, writer: FindingsWriter, conn: Connection, engine: sa.Engine, url: URL, jobs: int
    ) -> None:
        """Diff ``jobs`` entities at once, each connection in the audit's snapshot.

        Findings are collected per entity (memory follows the drift) and written
        in spec order, so the folder is the same as a sequential audit's.
        """
        snapshot_id = self.dialect.export_snapshot(conn)
        extra: list[Connection] = []
        idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        idle.put(conn)
        try:
            for _ in range(min(jobs, len(self.entities)) - 1):
                with database_errors(url, "cannot connect"):
                    other = engine.connect()
                extra.append(other)
                idle.put(self.dialect.join_snapshot(other, snapshot_id))

            def run(name: str) -> list[Finding]:
                mine = idle.get()
                try:
                    t = time.perf_counter()
                    found = list(self.findings(mine, name))
                    self.timer.measure(f"entity:{name}", t)
                    return found
                finally:
                    idle.put(mine)

            pool = ThreadPoolExecutor(max_workers=len(extra) + 1, thread_name_prefix="drift-diff")
            futures = {name: pool.submit(run, name) for name in self.entities}
            try:
                wait(futures.values(), return_when=FIRST_EXCEPTION)
                for name in self.entities:
                    writer.add_all(futures[name].result())
            except BaseException:
                # A failure or Ctrl-C: cancel the statements still running until every
                # worker has stopped (a worker between statements would start another).
                for future in futures.values():
                    future.cancel()
                while not all(f.done() for f in futures.values()):
                    for other in [conn, *extra]:
                        _cancel_query(other)
                    wait(futures.values(), timeout=0.2)
                raise
            finally:
                pool.shutdown(wait=True)
        finally:
            for other in extra:
                try:
                    other.rollback()
                finally:
                    other.close()


def _cancel_query(conn: Connection) -> None:
    """Ask the server to cancel the connection's running statement (thread-safe)."""
    try:
        raw = conn.connection.driver_connection
        cancel = getattr(raw, "cancel", None)
        if cancel is not None:
            cancel()
    except Exception:  # noqa: BLE001 - best effort: the error being raised matters more
        pass


def _password(raw_url: str | None) -> str | None:
    if not raw_url:
        return None
    try:
        password = make_url(raw_url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has already been reported
        return None
    return str(password) if password else None


def _require_sqlite_file(url: URL) -> None:
    """SQLite would silently create an empty database for a wrong path."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise DatabaseError(f"SQLite database file not found: {database}")


#: Tables the planner statistics put at this many rows or more are not counted:
#: ``rows_scanned`` holds the estimate and names them (a count(*) of 10M rows costs
#: about as much as diffing a small entity).
ESTIMATE_FROM = 1_000_000


class _RowCounter:
    """Row counts for ``rows_scanned``: exact, or the statistics' estimate for big tables."""

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self.conn, self.dialect = conn, dialect
        self.estimated: set[str] = set()

    def count(self, table: sa.Table) -> int:
        estimate = self.dialect.row_estimate(self.conn, table)
        if estimate is not None and estimate >= ESTIMATE_FROM:
            self.estimated.add(table.fullname)
            return estimate
        return int(self.conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _watermark(
    conn: Connection, stream: BoundStream, rows_of: _RowCounter | None
) -> dict[str, Any]:
    rows = rows_of.count(stream.table) if rows_of else None
    top = conn.execute(
        sa.select(*stream.order_by)
        .select_from(stream.table)
        .where(*(o.is_not(None) for o in stream.order_by))
        .order_by(*(o.desc() for o in stream.order_by))
        .limit(1)
    ).first()
    return {
        "order_by": list(stream.spec.order_by),
        "value": None if top is None else [_plain(v) for v in top],
        "rows": rows,
    }


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a watermark value."""
    if isinstance(value, (int, str, float, bool)) or value is None:
        return value
    return iso(value) if isinstance(value, (dt.datetime, dt.date)) else str(value)


def _summary(
    spec: Spec,
    url: URL,
    bound: BoundSpec,
    isolation: str,
    snapshot_at: Any,
    watermarks: dict[str, Any],
    entity_rows: dict[str, int | None],
    writer: FindingsWriter,
    timer: _Timer,
    only_keys: Mapping[str, KeyFilter] | None,
    stuck_after: dt.timedelta = DEFAULT_STUCK_AFTER,
    scope: Scope | None = None,
    estimated: set[str] | None = None,
) -> dict[str, Any]:
    counts = writer.counts()
    estimated = estimated or set()
    guessed = {
        "entities": [n for n, e in bound.entities.items() if e.table.fullname in estimated],
        "streams": [n for n, s in bound.streams.items() if s.table.fullname in estimated],
    }
    return {
        "tool": "drift",
        "version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "spec": {"path": str(spec.path) if spec.path else None, "sha256": spec.sha256},
        "database": {"url": mask_url(url), "dialect": url.get_backend_name()},
        "snapshot": {"taken_at": iso(snapshot_at), "isolation": isolation},
        "scope": (
            "incremental" if scope is not None else "keys" if only_keys is not None else "full"
        ),
        **({"incremental": scope.describe()} if scope is not None else {}),
        "watermarks": watermarks,
        "rows_scanned": {
            "entities": entity_rows,
            "streams": {name: w["rows"] for name, w in watermarks.items()},
            # Names whose count is the planner statistics' estimate (tables of ESTIMATE_FROM
            # rows or more), only when there are any.
            **({"estimated": guessed} if estimated else {}),
        },
        "entities": {
            name: {
                "table": entity.spec.table,
                "key": list(entity.spec.key),
                "columns": {
                    c.spec.name: {"fold": c.spec.fold, "stream": c.spec.stream}
                    for c in entity.columns
                },
            }
            for name, entity in bound.entities.items()
        },
        "counts": counts,
        "fix_first": writer.fix_first(),
        "attribution": {
            "job_logs": {
                name: {"entity": j.spec.entity, "preset": j.spec.preset, "table": j.spec.table}
                for name, j in bound.job_logs.items()
            },
            "outboxes": {
                name: {"entity": o.spec.entity, "stream": o.spec.stream, "table": o.spec.table}
                for name, o in bound.outboxes.items()
            },
            "stuck_after_seconds": stuck_after.total_seconds(),
        },
        "timings": timer.timings,
    }
