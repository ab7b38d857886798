"""Audit exactness over many seeds: racing workers, then findings equal the ground truth.

tests/test_races.py runs one seed per engine; this runs more (DRIFT_RELIABILITY_RUNS
multiplies them). The truth is tests/workload.py's plain Python fold of the events.
"""

from __future__ import annotations

import json

import pytest

from drift import demo
from tests.reliability import scaled
from tests.test_races import HOT_ORDERS, HOT_SKUS, audit_rows, canonical
from tests.workload import ground_truth, run_racy_workers

pytestmark = pytest.mark.slow


@pytest.mark.scenario("racing workers, then audit == ground truth (many seeds)")
def test_audit_equals_ground_truth_over_seeds(backend, tmp_path, scenario_runs):
    workers = 2 if backend.name == "sqlite" else 4
    drifted = 0
    for seed in range(10, 10 + scaled(3)):
        with backend.engine.begin() as conn:
            demo.metadata.drop_all(conn)
            demo.metadata.create_all(conn)
            demo.build_shop(conn, seed=seed)
        backend.engine.dispose()
        run_racy_workers(backend.url, workers, HOT_SKUS, HOT_ORDERS, iterations=40, seed=seed)
        truth = ground_truth(backend.engine)
        assert canonical(audit_rows(backend, tmp_path / f"seed{seed}")) == truth, seed
        hot = {k for (e, k, c, kind, _, _) in truth if e == "inventory" and kind == "mismatch"}
        assert hot & {json.dumps([s]) for s in HOT_SKUS}, f"seed {seed}: no race happened"
        drifted += len(truth)
        scenario_runs.run()
    scenario_runs.notes.append(f"{drifted} findings checked against the truth")
