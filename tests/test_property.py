"""Property: random streams and rows with random corruption yield exactly the corruptions.

The truth comes from tests/naive.py (a plain Python fold), never from drift.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import parse_spec, run_audit
from tests import shop
from tests.naive import fold, same

KEYS = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 3)]
COLUMNS = {  # column -> (fold, value of an event row)
    "total": ("sum", lambda r: r["v"]),
    "cnt": ("count", None),
    "lo": ("min", lambda r: r["v"]),
    "hi": ("max", lambda r: r["v"]),
    "first_s": ("first", lambda r: r["s"]),
    "last_s": ("last", lambda r: r["s"]),
}

event = st.fixed_dictionaries(
    {
        "key": st.sampled_from(KEYS),
        "v": st.one_of(st.none(), st.integers(-1000, 1000)),
        "s": st.one_of(st.none(), st.sampled_from(["x", "y", "Z", "é", "😀"])),
    }
)
corruption = st.tuples(
    st.sampled_from(list(COLUMNS)),
    st.one_of(st.none(), st.integers(-5, 5), st.sampled_from(["x", "q"])),
)

case = st.fixed_dictionaries(
    {
        "events": st.lists(event, max_size=25),
        "present": st.sets(st.sampled_from(KEYS)),
        "corrupt": st.dictionaries(st.sampled_from(KEYS), st.lists(corruption, max_size=3)),
    }
)


def truth_and_rows(data):
    events = [
        {"id": i, "k1": e["key"][0], "k2": e["key"][1], "v": e["v"], "s": e["s"], "key": e["key"]}
        for i, e in enumerate(data["events"], 1)
    ]
    expected = {name: fold(events, f, value) for name, (f, value) in COLUMNS.items()}
    explained = {e["key"] for e in events}
    rows, truth = [], set()
    for key in sorted(data["present"]):
        row = {"k1": key[0], "k2": key[1]}
        for name in COLUMNS:
            default = 0 if COLUMNS[name][0] in ("sum", "count") else None
            row[name] = expected[name].get(key, default)
        for name, value in data["corrupt"].get(key, []):
            numeric = name in ("total", "cnt", "lo", "hi")
            if numeric and isinstance(value, int):
                row[name] = (row[name] or 0) + value
            elif not numeric and not isinstance(value, int):
                row[name] = value
            elif value is None:
                row[name] = None
        rows.append(row)
        if key not in explained:
            truth.add((key, None, "orphan_row"))
            continue
        for name in COLUMNS:
            if not same(row[name], expected[name][key]):
                truth.add((key, name, "mismatch"))
    truth |= {(k, None, "missing_row") for k in explained - data["present"]}
    return events, rows, truth


def check(backend, data):
    events, rows, truth = truth_and_rows(data)
    with backend.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS ent"))
        conn.execute(sa.text("DROP TABLE IF EXISTS ev"))
    shop.load(
        backend, [{k: v for k, v in e.items() if k not in ("id", "key")} for e in events], rows
    )
    spec = parse_spec(shop.spec_text(backend.url))
    with tempfile.TemporaryDirectory() as tmp:
        result = run_audit(spec, out=Path(tmp) / "a", write_report=False)
        found = pq.read_table(result.findings_path).to_pylist()
    got = {(tuple(json.loads(r["key"])), r["column"], r["kind"]) for r in found}
    assert got == truth
    # And the values drift reports are the naive fold's.
    for r in found:
        if r["kind"] == "mismatch":
            key = tuple(json.loads(r["key"]))
            f, value = COLUMNS[r["column"]]
            naive = fold([e for e in events if e["key"] == key], f, value)[key]
            assert same(json.loads(r["expected"]), naive)


@pytest.mark.scenario("property: random corruption is found exactly")
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=case)
def test_random_corruption_is_found_exactly_sqlite(sqlite_backend, data, scenario_runs):
    check(sqlite_backend, data)
    scenario_runs.run()


@pytest.mark.scenario("property: random corruption is found exactly")
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=case)
def test_random_corruption_is_found_exactly_on_servers(server_backend, data, scenario_runs):
    check(server_backend, data)
    scenario_runs.run()
