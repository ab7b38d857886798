"""The attribution rules on constructed runs: each cause where it must fire and must not."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from audit.attribution import (
    Run,
    classify_numeric,
    classify_stale,
    instant,
    overlapping_pairs,
    retry_pairs,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def run(id, start, finish, job="ship", attempt=1, status="succeeded"):  # noqa: A002
    started = T0 + dt.timedelta(seconds=start)
    finished = None if finish is None else T0 + dt.timedelta(seconds=finish)
    return Run(
        id=id,
        job=job,
        worker="w",
        attempt=attempt,
        status=status,
        started_at=started,
        finished_at=finished,
        start=started,
        finish=finished,
    )


def ids(pairs):
    return [[a.id if a else None, b.id] for a, b in pairs]


# --------------------------------------------------------------------------- overlaps


def test_overlap_is_strict_and_sees_nested_and_open_runs():
    runs = [
        run(1, 0, 10),
        run(2, 10, 20),  # touches 1 at t=10: not an overlap
        run(3, 5, 6),  # nested in 1
        run(4, 15, None),  # never finished: open-ended, overlaps 2 and everything after
        run(5, 100, 101),
    ]
    assert ids(overlapping_pairs(runs)) == [[1, 3], [2, 4], [4, 5]]


def test_overlap_needs_a_start():
    runs = [run(1, 0, 10), Run(2, "ship", None, 1, "ok", None, None, None, None)]
    assert overlapping_pairs(runs) == []


def test_instant_reads_strings_naive_and_aware_values_alike():
    assert instant("2026-01-01T12:00:00Z") == T0
    assert instant("2026-01-01 12:00:00") == T0
    assert instant(dt.datetime(2026, 1, 1, 12)) == T0
    assert instant("not a time") is None and instant(None) is None


# --------------------------------------------------------------------------- retries


def test_retries_by_attempt_number_and_by_failed_predecessor():
    runs = [
        run(1, 0, 1, job="receive", attempt=1, status="failed"),
        run(2, 5, 6, job="receive", attempt=2),  # attempt + 1
        run(3, 10, 11, job="ship", status="error"),
        run(4, 12, 13, job="ship"),  # follows a failed run of the same job
        run(5, 20, 21, job="ship"),  # follows a succeeded run: not a retry
        run(6, 30, 31, job="bill", attempt=3),  # attempt 3 with no earlier run here
        run(7, 40, 41, job="other", attempt=1, status="failed"),
        run(8, 42, 43, job="unrelated"),  # a different job after a failure: not a retry
    ]
    assert ids(retry_pairs(runs, ["failed", "error"])) == [[1, 2], [3, 4], [None, 6]]


def test_failed_statuses_come_from_the_spec():
    runs = [run(1, 0, 1, status="boom"), run(2, 2, 3)]
    assert retry_pairs(runs, ["failed"]) == []
    assert ids(retry_pairs(runs, ["boom"])) == [[1, 2]]


# --------------------------------------------------------------------------- numeric causes


def effects(**by_id):
    return {k.lstrip("r"): Decimal(v) for k, v in by_id.items()}


def classify(drift, runs, eff, exact=True):
    return classify_numeric(
        Decimal(drift),
        runs,
        overlapping_pairs(runs),
        retry_pairs(runs, ["failed"]),
        eff,
        exact,
    )


def test_lost_update_fires_when_the_drift_is_minus_an_overlapping_runs_effect():
    runs = [run(1, 0, 10), run(2, 5, 15), run(3, 30, 40)]
    verdict = classify(3, runs, effects(r1=-3, r2=-2, r3=-3))
    assert verdict.cause == "lost_update" and verdict.confidence == "high"
    assert verdict.detail == {"lost_runs": [1]}
    assert verdict.first_divergence_at == (T0 + dt.timedelta(seconds=5)).isoformat()
    assert verdict.jobs == ("ship",)


def test_lost_update_does_not_fire_for_a_run_that_overlapped_nothing():
    runs = [run(1, 0, 10), run(2, 5, 15), run(3, 30, 40)]
    verdict = classify(7, runs, effects(r1=-3, r2=-2, r3=-7))  # only run 3 has -7
    assert verdict.cause == "unknown" and verdict.confidence == "low"


def test_lost_update_over_several_runs_is_medium():
    runs = [run(1, 0, 10), run(2, 1, 11), run(3, 2, 12)]
    verdict = classify(5, runs, effects(r1=-3, r2=-2, r3=-4))  # runs 1 and 2 lost
    assert verdict.cause == "lost_update" and verdict.confidence == "medium"
    assert verdict.detail == {"lost_runs": [1, 2]}


def test_without_run_ids_effects_by_time_window_are_medium():
    runs = [run(1, 0, 10), run(2, 5, 15)]
    verdict = classify(3, runs, effects(r1=-3, r2=-2), exact=False)
    assert verdict.cause == "lost_update" and verdict.confidence == "medium"


def test_with_no_way_to_know_effects_overlaps_are_a_low_confidence_lost_update():
    runs = [run(1, 0, 10), run(2, 5, 15)]
    verdict = classify(3, runs, None)
    assert verdict.cause == "lost_update" and verdict.confidence == "low"


def test_double_apply_fires_when_a_retry_repeats_an_effect():
    runs = [run(1, 0, 1, "receive", 1, "failed"), run(2, 5, 6, "receive", 2)]
    verdict = classify(12, runs, effects(r1=12, r2=0))
    assert verdict.cause == "double_apply" and verdict.confidence == "high"
    assert verdict.detail == {"retry": [1, 2]}
    assert verdict.first_divergence_at == (T0 + dt.timedelta(seconds=5)).isoformat()


def test_double_apply_does_not_fire_without_a_retry():
    runs = [run(1, 0, 1, "receive"), run(2, 5, 6, "receive")]  # both succeeded, attempt 1
    verdict = classify(12, runs, effects(r1=12, r2=12))
    assert verdict.cause == "unexplained_write"


def test_double_apply_does_not_fire_when_the_drift_is_not_the_effect():
    runs = [run(1, 0, 1, "receive", 1, "failed"), run(2, 5, 6, "receive", 2)]
    verdict = classify(5, runs, effects(r1=12, r2=0))
    assert verdict.cause == "unknown"


def test_no_runs_is_an_unexplained_write():
    verdict = classify(4, [], {})
    assert verdict.cause == "unexplained_write" and verdict.jobs == ()


def test_tolerance_widens_the_match():
    runs = [run(1, 0, 10), run(2, 5, 15)]
    pairs = overlapping_pairs(runs)
    eff = effects(r1="-3.0001", r2=-2)
    strict = classify_numeric(Decimal(3), runs, pairs, [], eff, True)
    loose = classify_numeric(Decimal(3), runs, pairs, [], eff, True, Decimal("0.001"))
    assert (strict.cause, loose.cause) == ("unknown", "lost_update")


# --------------------------------------------------------------------------- stale overwrite


def rows(*values):
    return [
        {"order": (i,), "value": v, "time": T0 + dt.timedelta(seconds=i), "run_id": i}
        for i, v in enumerate(values, 1)
    ]


@pytest.mark.parametrize(
    ("fold", "history", "actual", "stale_order"),
    [
        ("last", rows("new", "paid", "shipped"), "paid", 2),
        ("last", rows("new", "paid", "shipped"), "new", 1),
        ("first", rows("new", "paid", "shipped"), "shipped", 3),
    ],
)
def test_stale_overwrite_names_the_earlier_row(fold, history, actual, stale_order):
    runs = [run(i, i, i + 0.5, job=f"job{i}") for i in (1, 2, 3)]
    verdict = classify_stale(actual, history, fold, runs, [], [])
    assert verdict.cause == "stale_overwrite"
    assert verdict.detail["stale_row"]["order"] == [stale_order]
    assert verdict.jobs == (f"job{stale_order}",)


@pytest.mark.parametrize("actual", ["refunded", None])
def test_stale_overwrite_does_not_fire_for_a_value_the_stream_never_held(actual):
    verdict = classify_stale(actual, rows("new", "paid", "shipped"), "last", [], [], [])
    assert verdict.cause == "unexplained_write"


def test_stale_overwrite_does_not_fire_when_the_old_value_is_also_the_newest():
    # 'paid' again as the newest value: the row should say 'paid', so this is no staleness
    verdict = classify_stale("new", rows("paid", "paid"), "last", [], [], [])
    assert verdict.cause == "unexplained_write"
