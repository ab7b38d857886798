"""Incremental audits (``--since-last``) against full audits, on SQLite, PostgreSQL and MariaDB.

The data is the tiny ``ev``/``ent`` shop of tests/shop.py (composite key
(k1, k2), events ordered by id). Each test documents which keys new events
touch, and which drift an incremental audit must and must not see.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import sqlalchemy as sa

from audit.errors import StateError
from drift.cli import main
from tests.shop import audit, brief, ev, load

SUM = '[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v"\n'
LAST = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
COLUMNS = SUM + "\n" + LAST

# Keys a1, a2, a3: a3 already drifted before the first audit (total 99, events say 3).
EVENTS = [
    {"k1": "a", "k2": 1, "v": 5, "s": "x"},
    {"k1": "a", "k2": 2, "v": 7, "s": "y"},
    {"k1": "a", "k2": 3, "v": 3, "s": "z"},
]
ROWS = [
    {"k1": "a", "k2": 1, "total": 5, "last_s": "x"},
    {"k1": "a", "k2": 2, "total": 7, "last_s": "y"},
    {"k1": "a", "k2": 3, "total": 99, "last_s": "z"},
]
A3_DRIFT = (("a", 3), "total", "mismatch", 3, 99)


def add_event(backend, id_: int, k1: str, k2: int, v: int, s: str) -> None:
    with backend.engine.begin() as conn:
        conn.execute(ev.insert().values(id=id_, k1=k1, k2=k2, v=v, s=s))


def set_row(backend, key: tuple[str, int], **values: object) -> None:
    ent = sa.table("ent", *(sa.column(c) for c in ("k1", "k2", *values)))
    with backend.engine.begin() as conn:
        conn.execute(ent.update().where(ent.c.k1 == key[0], ent.c.k2 == key[1]).values(**values))


def run(backend, tmp_path, name, **kwargs):
    kwargs.setdefault("since_last", tmp_path / "state.json")
    return audit(backend, tmp_path, COLUMNS, name=name, **kwargs)


def test_first_run_is_a_full_audit_and_records_marks(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    result, found = run(backend, tmp_path, "first")
    assert result.summary["scope"] == "full"
    assert brief(found) == {A3_DRIFT}
    state = json.loads((tmp_path / "state.json").read_text())
    (entry,) = state["audits"].values()
    assert [m["streams"] for m in entry["marks"]] == [{"ev": [3]}]


def test_new_drift_is_found_old_keys_are_not_re_reported(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    run(backend, tmp_path, "first")
    # a1: a new event the worker never applied (drift the incremental audit must find).
    # a2: a new event correctly applied (touched, clean).
    # a3: untouched, still drifted: not re-reported.
    # b9: a brand-new key whose row was never written (missing row).
    add_event(backend, 10, "a", 1, 4, "late")
    add_event(backend, 11, "a", 2, 1, "y2")
    set_row(backend, ("a", 2), total=8, last_s="y2")
    add_event(backend, 12, "b", 9, 2, "new")
    result, found = run(backend, tmp_path, "second")
    assert result.summary["scope"] == "incremental"
    assert result.summary["incremental"]["since"]["streams"] == {"ev": [3]}
    assert brief(found) == {
        (("a", 1), "total", "mismatch", 9, 5),
        (("a", 1), "last_s", "mismatch", "late", "x"),
        (("b", 9), None, "missing_row", (("last_s", "new"), ("total", 2)), "ABSENT"),
    }
    # The full audit sees the same drift plus the untouched a3.
    _, full = audit(backend, tmp_path, COLUMNS, name="full")
    assert brief(full) == brief(found) | {A3_DRIFT}
    # Nothing new since: with no lookback the next audit starts after id 12.
    _, again = run(backend, tmp_path, "third", lookback=dt.timedelta(0))
    assert again == []


def test_a_direct_write_without_an_event_is_invisible_to_incremental_audits(backend, tmp_path):
    """The documented blind spot: only a full audit sees a row changed with no new event."""
    load(backend, EVENTS, ROWS)
    run(backend, tmp_path, "first")
    set_row(backend, ("a", 1), total=1000)
    _, found = run(backend, tmp_path, "second")
    assert found == []
    _, full = audit(backend, tmp_path, COLUMNS, name="full")
    assert (("a", 1), "total", "mismatch", 5, 1000) in brief(full)


def test_lookback_catches_a_row_committed_late_with_a_smaller_id(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    lookback = dt.timedelta(seconds=1)
    run(backend, tmp_path, "first", lookback=lookback)  # sees ids up to 3
    add_event(backend, 5, "a", 2, 0, "y")
    time.sleep(1.2)
    run(backend, tmp_path, "second", lookback=lookback)  # sees ids up to 5
    # A transaction that took id 4 before the second audit commits only now.
    add_event(backend, 4, "a", 1, 1, "x")
    (tmp_path / "copy.json").write_text((tmp_path / "state.json").read_text())
    # Without a lookback the audit starts after id 5 and misses it...
    _, missed = run(
        backend, tmp_path, "missed", since_last=tmp_path / "copy.json", lookback=dt.timedelta(0)
    )
    # ...with one it starts from the first audit's mark (taken > 1 s before the second).
    _, caught = run(backend, tmp_path, "caught", lookback=lookback)
    assert missed == []
    assert brief(caught) == {(("a", 1), "total", "mismatch", 6, 5)}


def test_corrupt_state_is_an_error_and_nothing_is_written(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "audits": {"x": {"marks": [{"taken_at": 5}]}}')
    with pytest.raises(StateError, match=r"state\.json is corrupt .*delete it"):
        run(backend, tmp_path, "broken")
    assert not (tmp_path / "broken").exists()
    assert state.read_text().startswith('{"version": 1, "audits": {"x"')


def test_a_failed_audit_does_not_move_the_marks(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    run(backend, tmp_path, "first")
    before = (tmp_path / "state.json").read_text()
    add_event(backend, 10, "a", 1, 4, "late")
    with backend.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE ent"))
    with pytest.raises(Exception, match="ent"):
        run(backend, tmp_path, "failed")
    assert (tmp_path / "state.json").read_text() == before


def test_a_changed_spec_starts_over_with_a_full_audit(backend, tmp_path):
    load(backend, EVENTS, ROWS)
    run(backend, tmp_path, "first")
    result, found = audit(
        backend, tmp_path, SUM, name="other-spec", since_last=tmp_path / "state.json"
    )
    assert result.summary["scope"] == "full"
    assert brief(found) == {A3_DRIFT}
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["audits"]) == 2


def test_cli_since_last(sqlite_backend, tmp_path, capsys):
    load(sqlite_backend, EVENTS, ROWS)
    spec = tmp_path / "drift.toml"
    from tests.shop import spec_text

    spec.write_text(spec_text(sqlite_backend.url, COLUMNS))
    assert main(["-q", "audit", "-c", str(spec), "-o", str(tmp_path / "a"), "--since-last"]) == 1
    assert (tmp_path / ".drift-state.json").is_file()
    assert main(["-q", "audit", "-c", str(spec), "-o", str(tmp_path / "b"), "--since-last"]) == 0
    out = capsys.readouterr().out
    assert "incremental: keys touched by stream rows after the audit of" in out
    code = main(["-q", "audit", "-c", str(spec), "-o", str(tmp_path / "c"), "--state", "x.json"])
    assert code == 2
    assert "--state only applies to --since-last audits" in capsys.readouterr().err


def test_a_nullable_order_by_keeps_a_non_null_mark(backend, tmp_path):
    """PostgreSQL sorts NULLs first in DESC order: the mark must skip them."""
    events = [
        {"k1": "a", "k2": 1, "v": 5, "t": "2026-01-01T00:00:01"},
        {"k1": "a", "k2": 2, "v": 7, "t": None},
    ]
    rows = [{"k1": "a", "k2": 1, "total": 5}, {"k1": "a", "k2": 2, "total": 7}]
    from tests import shop

    load(backend, events, rows)
    text = shop.spec_text(backend.url, SUM).replace('order_by = ["id"]', 'order_by = ["t"]')
    from audit import parse_spec, run_audit

    state = tmp_path / "state.json"
    first = run_audit(parse_spec(text), out=tmp_path / "first", since_last=state)
    assert first.summary["watermarks"]["ev"]["value"] == ["2026-01-01T00:00:01"]
    with backend.engine.begin() as conn:
        conn.execute(ev.insert().values(id=9, k1="a", k2=2, v=1, t="2026-01-01T00:00:09"))
    second = run_audit(parse_spec(text), out=tmp_path / "second", since_last=state)
    assert second.summary["scope"] == "incremental"
    assert second.summary["counts"]["by_kind"] == {"mismatch": 1}


def test_since_last_and_only_keys_do_not_combine(sqlite_backend, tmp_path):
    from audit.errors import DriftError

    load(sqlite_backend, EVENTS, ROWS)
    with pytest.raises(DriftError, match="either incremental"):
        run(sqlite_backend, tmp_path, "both", only_keys={"ent": [("a", 1)]})
    assert not (tmp_path / "state.json").exists()


def test_a_row_tying_with_the_mark_of_a_non_unique_order_by_is_seen(backend, tmp_path):
    """A stream ordered by a timestamp can have ties: a row committed after an audit with
    the mark's very timestamp is new. ``order_by > mark`` never saw it, whatever the
    lookback; a stream whose order_by is not unique re-reads the mark's rows."""
    from audit.run import run_audit
    from audit.spec import parse_spec
    from tests.shop import spec_text

    at = "2026-01-01T10:00:00"
    events = [{"k1": "a", "k2": 1, "v": 5, "t": at}, {"k1": "a", "k2": 2, "v": 5, "t": at}]
    load(backend, events, [{"k1": "a", "k2": k, "total": 5} for k in (1, 2)])
    spec = parse_spec(spec_text(backend.url, SUM).replace('order_by = ["id"]', 'order_by = ["t"]'))
    state = tmp_path / "state.json"

    def since_last(name):
        result = run_audit(
            spec,
            out=tmp_path / name,
            write_report=False,
            since_last=state,
            lookback=dt.timedelta(0),
        )
        import pyarrow.parquet as pq

        return result, pq.read_table(result.findings_path).to_pylist()

    first, found = since_last("first")
    assert (first.summary["scope"], found) == ("full", [])
    with backend.engine.begin() as conn:  # committed after the audit, same timestamp
        conn.execute(ev.insert().values(id=3, k1="a", k2=2, v=1, t=at))
    second, found = since_last("second")
    assert second.summary["scope"] == "incremental"
    assert brief(found) == {(("a", 2), "total", "mismatch", 6, 5)}
