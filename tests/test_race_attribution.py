"""Real concurrent workers race on PostgreSQL and MariaDB; drift must name every race.

Four worker processes (spawn) run racy read-modify-write ``bump`` jobs on a few
counters, and one runs a ``deposit`` job that is retried after committing. Each
``bump`` on a key adds a distinct power of two, so the final counter value
alone says which runs' effects survived (its bits) -- a ground truth that needs
neither drift nor the job log. Overlaps are computed here from the intervals
the workers recorded themselves.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from tests import race_workers as rw

pytestmark = [pytest.mark.server, pytest.mark.slow]

WORKERS = 4
RACY_KEYS = [f"R{i}" for i in range(5)]
BUMPS_PER_KEY = 8  # deltas 1, 2, 4, ... 128: distinct bits
RETRIED_KEYS = {"D0": 1000, "D1": 3000}


def _jobs() -> list[list[tuple]]:
    jobs: list[list[tuple]] = [[] for _ in range(WORKERS)]
    i = 0
    for bit in range(BUMPS_PER_KEY):
        for key in RACY_KEYS:
            jobs[i % WORKERS].append(("bump", key, 1 << bit))
            i += 1
    for n, (key, delta) in enumerate(RETRIED_KEYS.items()):
        jobs[n].insert(0, ("deposit", key, delta))
    return jobs


def _overlaps(runs: list[dict]) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in itertools.combinations(runs, 2):
        if a["start"] < b["finish"] and b["start"] < a["finish"]:
            pairs.add(tuple(sorted((a["id"], b["id"]))))
    return pairs


def test_real_workers_races_are_attributed_with_their_overlapping_runs(server_backend, tmp_path):
    with server_backend.engine.begin() as conn:
        rw.metadata.create_all(conn)
        conn.execute(rw.counters.insert(), [{"k": k, "n": 0} for k in [*RACY_KEYS, *RETRIED_KEYS]])

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    files = [tmp_path / f"truth-{w}.json" for w in range(WORKERS)]
    procs = [
        ctx.Process(
            target=rw.work,
            args=(server_backend.url, f"w{w}", jobs, barrier, str(files[w]), w),
        )
        for w, jobs in enumerate(_jobs())
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    truth = [run for f in files for run in json.loads(f.read_text())]

    with server_backend.engine.connect() as conn:
        final = dict(conn.execute(sa.select(rw.counters.c.k, rw.counters.c.n)).all())

    result = run_audit(
        parse_spec(rw.SPEC + f'\n[database]\nurl = "{server_backend.url}"\n'),
        out=tmp_path / "audit",
    )
    findings = {json.loads(r["key"])[0]: r for r in pq.read_table(result.findings_path).to_pylist()}

    lost_anywhere = 0
    for key in RACY_KEYS:
        runs = [r for r in truth if r["key"] == key]
        assert len(runs) == BUMPS_PER_KEY
        survived = {r["id"] for r in runs if final[key] & r["delta"]}
        lost = {r["id"] for r in runs} - survived
        if not lost:
            assert key not in findings
            continue
        lost_anywhere += 1
        finding = findings[key]
        evidence = json.loads(finding["evidence"])
        assert finding["cause"] == "lost_update", evidence["why"]
        truly_overlapping = _overlaps(runs)
        assert {tuple(sorted(p)) for p in evidence["overlapping_runs"]} == truly_overlapping
        # every lost run was in a race window, and drift names exactly the lost runs
        assert lost <= {i for pair in truly_overlapping for i in pair}
        assert set(evidence["lost_runs"]) == lost
        assert evidence["confidence"] == ("high" if len(lost) == 1 else "medium")
    assert lost_anywhere, "the workers never raced; the test proved nothing"
    print(f"{lost_anywhere} of {len(RACY_KEYS)} keys lost updates")

    for key, delta in RETRIED_KEYS.items():
        assert final[key] == 2 * delta  # applied twice
        attempts = sorted((r for r in truth if r["key"] == key), key=lambda r: r["attempt"])
        finding = findings[key]
        evidence = json.loads(finding["evidence"])
        assert finding["cause"] == "double_apply"
        assert evidence["retries"] == [[attempts[0]["id"], attempts[1]["id"]]]
        assert evidence["confidence"] == "high"
    assert result.summary["counts"]["by_cause"] == {
        "lost_update": lost_anywhere,
        "double_apply": len(RETRIED_KEYS),
    }
    # Which job to fix first: most findings, then the larger total |delta|.
    bump_delta = sum(abs(findings[k]["delta"]) for k in RACY_KEYS if k in findings)
    scores = {"bump": (lost_anywhere, bump_delta), "deposit": (2, sum(RETRIED_KEYS.values()))}
    expected = min(scores, key=lambda job: (-scores[job][0], -scores[job][1], job))
    assert result.summary["fix_first"]["job"] == expected
