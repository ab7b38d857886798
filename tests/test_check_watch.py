"""drift check --every: one process, a check at a fixed rate, until stopped."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit.check import CheckResult, Thresholds, watch
from audit.errors import DatabaseError
from drift.cli import main
from drift.demo import build_demo


@pytest.fixture
def shop(tmp_path):
    return build_demo(tmp_path / "shop")


def watcher(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``drift check --every`` in its own process, with its own temp folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.Popen(
        [sys.executable, "-m", "drift", "-q", "check", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def ship_without_updating_the_count(database: Path) -> None:
    """What a racing worker does: records a shipment, never writes the new count."""
    db = sqlite3.connect(database)
    db.execute(
        "INSERT INTO stock_events (sku, kind, qty, created_at) "
        "VALUES ('SKU-001', 'shipped', 2, '2026-03-14T10:00:00Z')"
    )
    db.commit()
    db.close()


def test_every_checks_again_and_sees_what_another_process_wrote_meanwhile(shop, tmp_path):
    prom = tmp_path / "drift.prom"
    spec = str(shop.spec)
    proc = watcher(
        tmp_path, "-c", spec, "--since-last", "--every", "2s", "--count", "3", "-f", "json",
        "--textfile", str(prom),
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    # Between the first check and the third (at least one interval later), a worker
    # writes drift the first check could not have seen.
    ship_without_updating_the_count(shop.database)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=60) == 1, proc.stderr.read() if proc.stderr else ""
    checks = [first, *rest]
    assert [c["check"] for c in checks] == [1, 2, 3]
    assert [c["skipped"] for c in checks] == [0, 0, 0]
    # The first incremental check is a full audit: the demo's 5 drifted rows.
    assert first["drifted_rows"] == 5 and first["crossed"] is True
    # The second ran before or after the write; the third certainly after it.
    assert checks[1]["drifted_rows"] in (0, 1)
    third = checks[2]
    assert third["drifted_rows"] == 1 and third["crossed"] is True
    assert [(f["entity"], f["kind"]) for f in third["findings"]] == [("inventory", "mismatch")]
    assert all(c["seconds"] > 0 and c["audit_folder"] is None for c in checks)
    # The textfile holds the last check's metrics.
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert families["drift_drifted_rows"].samples[0].value == 1
    # Every scratch folder is gone.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_sigterm_stops_the_loop_cleanly_with_exit_0(shop, tmp_path):
    proc = watcher(tmp_path, "-c", str(shop.spec), "--every", "1h")
    assert proc.stdout is not None and proc.stderr is not None
    assert "drift check ALERT: 5 drifted row(s)" in proc.stdout.readline()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 30  # it did not wait for the next check
    assert proc.stderr.read() == "drift: stopped (SIGTERM)\n"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_failing_check_prints_one_line_without_the_password_and_the_loop_goes_on(capsys, shop):
    url = "postgresql://drift:s3cr3t-pw@127.0.0.1:1/shop"
    spec = str(shop.spec)
    code = main(["-q", "check", "-c", spec, "--db", url, "--every", "0.1s", "--count", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert " drift check ERROR: cannot connect" in line
        assert "s3cr3t-pw" not in line


def test_the_next_check_runs_after_a_failed_one(shop):
    """A database that goes away for one check: that check fails, the next one runs."""
    moved = shop.database.with_suffix(".away")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    ticks = []
    for tick in watch(shop.spec, every=0.01, count=3, sleep=sleep):
        ticks.append(tick)
        if tick.number == 1:
            shop.database.rename(moved)
        elif tick.number == 2:
            moved.rename(shop.database)
    assert [t.number for t in ticks] == [1, 2, 3]
    assert [t.result is not None for t in ticks] == [True, False, True]
    assert isinstance(ticks[1].error, DatabaseError)
    assert "SQLite database file not found" in str(ticks[1].error)
    assert ticks[0].result and ticks[0].result.drifted_rows == 5
    assert ticks[2].result and ticks[2].result.drifted_rows == 5


def test_checks_start_at_a_fixed_rate_and_skip_the_starts_a_long_one_missed(shop, monkeypatch):
    """Starts at 0, 5, 10, ...: a check that runs past the next start skips it."""
    import audit.check

    now = [0.0]
    durations = iter([1.0, 7.0, 1.0, 2.0])
    starts: list[float] = []

    def clock() -> float:
        return now[0]

    def sleep(seconds: float) -> None:
        assert seconds > 0
        now[0] += seconds

    def fake_check(*args, **kwargs) -> CheckResult:  # type: ignore[no-untyped-def]
        starts.append(now[0])
        now[0] += next(durations)
        summary = {"counts": {"drifted_rows": 0}, "timings": {"total": 0.0}}
        return CheckResult(summary, Thresholds(), (), 0.0, (), None)

    monkeypatch.setattr(audit.check, "run_check", fake_check)
    ticks = list(watch(shop.spec, every=5, count=4, clock=clock, sleep=sleep))
    # 0 (1 s), 5 (7 s: runs past 10), 15, 20.
    assert starts == [0.0, 5.0, 15.0, 20.0]
    assert [t.skipped for t in ticks] == [0, 0, 1, 0]
    assert [t.seconds for t in ticks] == [1.0, 7.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "2"], "drift: --count only applies with --every\n"),
        (
            ["--every", "1m", "--out", "x"],
            "drift: --out keeps one audit folder: it does not apply with --every\n",
        ),
        (
            ["--every", "1m", "-f", "prometheus"],
            "drift: --every prints one line per check (--format text or json); "
            "use --textfile for the Prometheus metrics\n",
        ),
        (["--every", "0s"], "drift: Invalid value for --every: must be longer than 0 s\n"),
        (["--every", "soon"], None),
    ],
)
def test_watch_options_are_checked_before_anything_runs(capsys, shop, tmp_path, args, message):
    code = main(["-q", "check", "-c", str(shop.spec), *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    if message is not None:
        assert err.endswith(message)
    else:
        assert err.splitlines()[-1].startswith("drift: Invalid value for --every")
    assert not (shop.folder / ".drift-state.json").exists()


def test_a_findings_only_audit_writes_the_findings_and_the_same_summary(shop, tmp_path):
    from audit import run_audit

    full = run_audit(shop.spec, out=tmp_path / "full")
    lean = run_audit(shop.spec, out=tmp_path / "lean", findings_only=True)
    assert sorted(p.name for p in lean.out_dir.iterdir()) == ["findings.parquet", "summary.json"]
    assert {"report.html", "plan", "evidence.parquet"} <= {p.name for p in full.out_dir.iterdir()}
    assert lean.summary["counts"] == full.summary["counts"]
    assert len(_rows(lean.findings_path)) == 6
    assert _rows(lean.findings_path) == _rows(full.findings_path)


def _rows(path: Path) -> list[dict[str, object]]:
    from audit.findings import read_findings

    return list(read_findings(path))


def test_the_text_line_says_when_starts_were_skipped(capsys, shop, monkeypatch):
    import audit.check

    summary = {"counts": {"drifted_rows": 0, "by_kind": {}}, "timings": {"total": 0.1}}
    result = CheckResult(summary, Thresholds(), (), 0.0, (), None)

    def fake_watch(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield audit.check.Tick(1, 0.0, 7.5, result, None, 0)
        yield audit.check.Tick(2, 15.0, 0.25, result, None, 2)

    monkeypatch.setattr(audit.check, "watch", fake_watch)
    code = main(["-q", "check", "-c", str(shop.spec), "--every", "5s", "--count", "2"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [
        "1970-01-01T00:00:00.000+00:00 drift check OK: 0 drifted row(s) (no findings) (7.50 s)",
        "1970-01-01T00:00:15.000+00:00 drift check OK: 0 drifted row(s) (no findings) "
        "(0.25 s, 2 start(s) skipped)",
    ]


def test_many_checks_leave_no_open_files_or_threads_behind(shop):
    """A watching process runs for days: each check closes its connections, files and
    threads."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def no_sleep(seconds: float) -> None:
        pass

    def run(count: int) -> None:
        ticks = list(watch(shop.spec, every=1, count=count, sleep=no_sleep))
        assert all(t.result is not None for t in ticks)

    run(3)  # warm-up: lazy imports, caches
    fds, threads = open_fds(), threading.active_count()
    run(20)
    assert (open_fds(), threading.active_count()) == (fds, threads)


def test_a_sigterm_during_the_textfile_write_waits_for_the_file(
    capsys, shop, tmp_path, monkeypatch
):
    """The textfile is written whole and no temp file is left, even when SIGTERM comes
    in the middle of writing it; then the loop stops with exit 0.

    Another thread is alive meanwhile, as in a real process (drift's preload thread, a
    driver's): the kernel may hand it the signal, so holding it off must not depend on
    which thread receives it (a per-thread signal mask did, and failed in CI).
    """
    import audit.check

    prom = tmp_path / "metrics" / "drift.prom"
    prom.parent.mkdir()
    real = audit.check.write_textfile

    def write_with_a_sigterm_inside(path, text):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # held until the write is done
        time.sleep(0.05)  # time for the handler to run, were it not held off
        real(path, text)

    monkeypatch.setattr(audit.check, "write_textfile", write_with_a_sigterm_inside)
    spec = str(shop.spec)
    before = signal.getsignal(signal.SIGTERM)
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        code = main(["-q", "check", "-c", spec, "--every", "1h", "--textfile", str(prom)])
    finally:
        done.set()
        other.join()
    out, err = capsys.readouterr()
    assert code == 0 and err == "drift: stopped (SIGTERM)\n"
    assert len(out.splitlines()) == 1
    assert [p.name for p in prom.parent.iterdir()] == ["drift.prom"]
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert families["drift_drifted_rows"].samples[0].value == 5
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_a_textfile_write_that_fails_leaves_no_temp_file(tmp_path, monkeypatch):
    """A failed or interrupted write removes its temp file and keeps the old file."""
    from audit.check import write_textfile
    from audit.errors import OutputError

    prom = tmp_path / "drift.prom"
    write_textfile(prom, "drift_up 1\n")

    def refuse(self, target):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(OutputError, match="cannot write .*drift.prom: Permission denied"):
        write_textfile(prom, "drift_up 0\n")

    def interrupt(self, target):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_textfile(prom, "drift_up 0\n")
    assert [p.name for p in tmp_path.iterdir()] == ["drift.prom"]
    assert prom.read_text() == "drift_up 1\n"
