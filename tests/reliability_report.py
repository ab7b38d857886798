"""Run the reliability scenarios and write docs/reliability.md from what they recorded.

    python tests/reliability_report.py [--runs N] [--workers 2] [--out docs/reliability.md]

Runs ``pytest -m scenario`` with DRIFT_REQUIRE_SERVERS=1 (server scenarios must
run, not skip), DRIFT_RELIABILITY_RECORD set to a scratch folder (each scenario
test appends its scenario, engine, runs and outcome there; see
tests/reliability.py) and DRIFT_RELIABILITY_RUNS=N (loops run N times their
default count). The table is generated, never typed: a failed or skipped
scenario shows as such, and the script exits 1 when any scenario failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["sqlite", "postgresql", "mysql"]

# Each guarantee drift's docs make, and the scenarios that would fail if it broke.
GUARANTEES = {
    "the audit never writes (read-only)": ["read-only audit: the database is unchanged"],
    "one consistent snapshot: no false finding under traffic": [
        "snapshot consistency: 20 audits under traffic == the prior drift",
        "racing workers, then audits under correct traffic == ground truth",
    ],
    "exact findings (no miss, no false positive)": [
        "racing workers, then audit == ground truth (many seeds)",
        "racing workers, then audit == ground truth (one seed)",
        "property: random corruption is found exactly",
    ],
    "all-or-nothing apply": [
        "all-or-nothing apply: a missed guard changes nothing",
        "connection dropped mid-apply: one-line error, whole batches, retry works",
        "SIGKILL at random points of a batched apply; resume completes",
    ],
    "no concurrent write is lost by a fix": [
        "apply under traffic (delta): no concurrent write lost",
        "apply under traffic (cas): a missed guard aborts, re-plan finishes",
    ],
    "one apply at a time": ["same plan applied by 3 processes at once: exactly one applies"],
    "a fix can be undone exactly": [
        "round trip: random corruption -> fix -> clean; rollback -> corruption back",
        "rollback restores the state exactly",
    ],
    "refusals: unapproved, tampered or damaged plans never run": [
        "apply refusals (approval, tampering, HMAC, target, rollback)",
        "damaged plan folder: approve and apply refuse, one line, exit 2",
    ],
    "one-line errors, exit 2, nothing half-written": [
        "broken spec corpus: one-line error naming section and key",
        "CLI errors: one line, exit 2, nothing written",
        "disk full during an audit: no audit folder, one-line error",
        "disk full while writing a plan: no half plan, old plan intact",
        "connection dropped mid-audit: one-line error, nothing written, retry works",
    ],
    "bad data is refused or reported, never a wrong finding": [
        "bad data: NULL keys reported per table",
        "bad data: duplicate keys reported, never picked",
        "bad data: text summed as numbers is a data error",
        "bad data: decimals and huge numbers exact",
        "bad data: timestamps with and without time zones",
        "bad data: malformed JSON in a job log's key",
    ],
    "values and names are never SQL or HTML": [
        "SQL metacharacters in keys and values: scripts, apply, rollback",
        "SQL metacharacters in table and column names: audit, plan, apply",
    ],
    "passwords never appear in output": [
        "password in the URL never reaches audit output",
        "password in the URL never reaches plan/approve/apply/verify/rollback output",
    ],
}

NOT_COVERED = [
    "Malformed JSON is pinned for job-log keys (a one-line error on every engine); outbox "
    "payloads read through `{ json = ... }` go through the same check but have no scenario "
    "of their own.",
    "Plan consistency checks the scripts against plan.json, not plan.json's values against "
    "the audit (an edit of `before`/`after` together with matching `sql` before approval is "
    "caught only by the reviewer).",
    "A connection dropped between apply's last batch and its final log update is not "
    "exercised separately (the retry path is the same as for a mid-batch drop).",
    "Network partitions that hang (rather than drop) a connection; server crash and restart "
    "during apply; replication lag (audit on a replica).",
    "SIGKILL of `drift audit` itself (the staging folder is left behind as a hidden "
    "`.partial` folder; no test pins that it is ignored by later commands).",
    "Disk full while writing approvals.json (the read-only case is covered; the write is "
    "one small file replaced atomically).",
    "MySQL proper (only MariaDB is tested), and SQLite under concurrent traffic during apply "
    "(SQLite serialises writers; apply under traffic runs on the servers only).",
]


def run_scenarios(runs: int, workers: int, extra: list[str]) -> tuple[list[dict], int, float]:
    with tempfile.TemporaryDirectory(prefix="drift-reliability-") as folder:
        env = dict(
            os.environ,
            DRIFT_RELIABILITY_RECORD=folder,
            DRIFT_RELIABILITY_RUNS=str(runs),
            DRIFT_REQUIRE_SERVERS="1",
        )
        command = [sys.executable, "-m", "pytest", "-m", "scenario", "-q", "-p", "no:cacheprovider"]
        if workers > 1:
            command += ["-n", str(workers)]
        started = dt.datetime.now(dt.UTC)
        code = subprocess.run([*command, *extra], cwd=ROOT, env=env).returncode
        elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
        records = []
        for path in sorted(Path(folder).glob("records-*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records, code, elapsed


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(records: list[dict], runs: int, workers: int, elapsed: float) -> str:
    table: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"tests": 0, "runs": 0, "outcomes": defaultdict(int), "notes": []}
    )
    for r in records:
        cell = table[(r["scenario"], r["engine"])]
        cell["tests"] += 1
        cell["runs"] += r["runs"]
        cell["outcomes"][r["outcome"]] += 1
        cell["notes"] += r["notes"]

    def order(item: tuple[tuple[str, str], dict]) -> tuple:
        (scenario, engine), _ = item
        rank = ENGINES.index(engine) if engine in ENGINES else len(ENGINES)
        return (scenario.lower(), rank, engine)

    dirty = " (with uncommitted changes)" if _git("status", "--porcelain") else ""
    failed = sum(c["outcomes"].get("failed", 0) for c in table.values())
    lines = [
        "# Reliability: what is proven, on which engine, how often",
        "",
        "<!-- Generated by tests/reliability_report.py from a test run; do not edit. -->",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} at commit "
        f"`{_git('rev-parse', '--short', 'HEAD')}`{dirty} by "
        f"`python tests/reliability_report.py --runs {runs}` "
        f"(DRIFT_RELIABILITY_RUNS={runs}, {workers} pytest worker(s), {elapsed:.0f} s, "
        "SQLite and the local PostgreSQL and MariaDB servers).",
        "",
        f"{len(records)} scenario test(s), {sum(c['runs'] for c in table.values())} run(s), "
        f"{failed} failed. *Runs* counts what a test exercised: seeds, kill points, "
        "hypothesis examples, rounds (1 for a single-shot test). The default suite runs each "
        "loop with DRIFT_RELIABILITY_RUNS=1.",
        "",
        "| scenario | engine | tests | runs | result | detail |",
        "|---|---|---:|---:|---|---|",
    ]
    for (scenario, engine), cell in sorted(table.items(), key=order):
        outcomes = cell["outcomes"]
        if outcomes.get("failed"):
            result = f"**FAILED** ({outcomes['failed']} of {cell['tests']})"
        elif outcomes.get("skipped"):
            result = f"skipped ({outcomes['skipped']} of {cell['tests']})"
        else:
            result = "passed"
        notes = "; ".join(dict.fromkeys(cell["notes"]))
        if len(notes) > 160:
            notes = notes[:157] + "..."
        lines.append(
            f"| {scenario} | {engine} | {cell['tests']} | {cell['runs']} | {result} | "
            f"{notes.replace('|', '/')} |"
        )
    lines += ["", "## Guarantees and the scenarios that back them", ""]
    passed = {s for (s, _), c in table.items() if set(c["outcomes"]) == {"passed"}}
    seen = {s for s, _ in table}
    for guarantee, scenarios in GUARANTEES.items():
        status = [
            ("passed" if s in passed else "FAILED" if s in seen else "MISSING") for s in scenarios
        ]
        mark = "backed" if all(x == "passed" for x in status) else "**NOT backed**"
        listed = "; ".join(f"{s} ({x})" for s, x in zip(scenarios, status))
        lines.append(f"* **{guarantee}**: {mark} by {listed}.")
    lines += ["", "## Not yet covered", ""]
    lines += [f"* {item}" for item in NOT_COVERED]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="DRIFT_RELIABILITY_RUNS")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args()
    records, code, elapsed = run_scenarios(args.runs, args.workers, args.pytest_args)
    if not records:
        print("no scenario records: did pytest run?", file=sys.stderr)
        return 2
    args.out.write_text(render(records, args.runs, args.workers, elapsed), encoding="utf-8")
    print(f"wrote {args.out} ({len(records)} scenario tests)")
    failed = any(r["outcome"] == "failed" for r in records)
    return 1 if failed or code not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
