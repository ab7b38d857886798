"""Attribution end to end on every engine, on a tiny ledger with documented defects.

Accounts and what was staged (times in seconds after T0):

* ``A`` lost update: runs 1 [0, 10] and 2 [5, 15] overlap; run 1's -3 was lost.
* ``B`` overlapping runs 3 and 4, but the drift (+1) is no run's effect: unknown.
* ``C`` one non-overlapping run wrote +10, the balance is +7 more: unexplained write.
* ``D`` double apply: run 6 (attempt 1) failed after writing +12, run 7 retried.
* ``E`` no job touched the key (a manual +4): unexplained write.
* ``F`` stale overwrite: status 'open' (run 8) is written over the newer 'closed' (run 9).
* ``G`` clean.

The job log keeps its key inside a JSON ``args`` column; runs of other entities
(no ``account`` in their args, or a JSON null) are in the same table.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import attribution, parse_spec, run_audit

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("balance", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16)),
)
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("account", sa.String(16), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16)),
    sa.Column("run_id", sa.Integer),
    sa.Column("at", sa.DateTime, nullable=False),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("job", sa.String(32), nullable=False),
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
)

SPEC = """
version = 1

[streams.ledger]
table = "ledger"
key = ["account"]
order_by = ["id"]
time = "at"
run_id = "run_id"

[entities.accounts]
table = "accounts"
key = ["id"]

[entities.accounts.columns.balance]
stream = "ledger"
fold = "sum"
value = "amount"

[entities.accounts.columns.status]
stream = "ledger"
fold = "last"
value = "status"
where = "status IS NOT NULL"

[job_logs.runs]
table = "runs"
entity = "accounts"
key = [{ json = "args", path = "account" }]
name = "job"
attempt = "attempt"
status = "status"
started_at = "started_at"
finished_at = "finished_at"
"""


def t(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def build(conn: sa.Connection) -> None:
    metadata.create_all(conn)
    run_rows = [
        # id, job, account, attempt, status, start, finish
        (10, "open_account", "A", 1, "succeeded", -100, -99),
        (1, "charge", "A", 1, "succeeded", 0, 10),
        (2, "charge", "A", 1, "succeeded", 5, 15),
        (3, "charge", "B", 1, "succeeded", 0, 10),
        (4, "charge", "B", 1, "succeeded", 5, 15),
        (5, "deposit", "C", 1, "succeeded", 0, 1),
        (6, "deposit", "D", 1, "failed", 0, 1),
        (7, "deposit", "D", 2, "succeeded", 5, 6),
        (8, "set_status", "F", 1, "succeeded", 0, 20),
        (9, "set_status", "F", 1, "succeeded", 5, 6),
        (11, "deposit", "G", 1, "succeeded", 0, 1),
    ]
    conn.execute(
        runs.insert(),
        [
            {
                "id": i,
                "job": job,
                "args": json.dumps({"account": acct, "note": "x"}),
                "attempt": attempt,
                "status": status,
                "started_at": t(start),
                "finished_at": t(finish),
            }
            for i, job, acct, attempt, status, start, finish in run_rows
        ]
        + [
            # Runs of another entity: no account in args, or a JSON null.
            {"id": 90, "job": "email", "args": "{}", "attempt": 1, "status": "failed"}
            | {"started_at": t(0), "finished_at": t(1)},
            {"id": 91, "job": "email", "args": '{"account": null}', "attempt": 2}
            | {"status": "succeeded", "started_at": t(0), "finished_at": None},
        ],
    )
    ledger_rows = [
        # id, account, amount, status, run_id, at
        (1, "A", 100, None, 10, -99.5),
        (2, "A", -3, None, 1, 3),
        (3, "A", -2, None, 2, 12),
        (4, "B", 100, None, None, -50),
        (5, "B", -3, None, 3, 3),
        (6, "B", -2, None, 4, 12),
        (7, "C", 10, None, 5, 0.5),
        (8, "D", 12, None, 6, 0.5),
        (9, "E", 5, None, None, 0),
        (10, "F", 1, "open", 8, 1),
        (11, "F", 0, "closed", 9, 5.5),
        (12, "G", 7, "open", 11, 0.5),
    ]
    conn.execute(
        ledger.insert(),
        [
            {"id": i, "account": a, "amount": n, "status": s, "run_id": r, "at": t(at)}
            for i, a, n, s, r, at in ledger_rows
        ],
    )
    conn.execute(
        accounts.insert(),
        [
            {"id": "A", "balance": 98, "status": None},  # expected 95
            {"id": "B", "balance": 96, "status": None},  # expected 95
            {"id": "C", "balance": 17, "status": None},  # expected 10
            {"id": "D", "balance": 24, "status": None},  # expected 12
            {"id": "E", "balance": 9, "status": None},  # expected 5
            {"id": "F", "balance": 1, "status": "open"},  # expected 'closed'
            {"id": "G", "balance": 7, "status": "open"},
        ],
    )


def audit(backend, tmp_path, spec_text=SPEC, name="audit"):
    spec = parse_spec(spec_text + f'\n[database]\nurl = "{backend.url}"\n')
    result = run_audit(spec, out=tmp_path / name)
    rows = pq.read_table(result.findings_path).to_pylist()
    return result, {(json.loads(r["key"])[0], r["column"]): r for r in rows}


def test_each_cause_fires_where_it_must_and_nowhere_else(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    result, found = audit(backend, tmp_path)
    causes = {k: (r["cause"], json.loads(r["evidence"])["confidence"]) for k, r in found.items()}
    assert causes == {
        ("A", "balance"): ("lost_update", "high"),
        ("B", "balance"): ("unknown", "low"),
        ("C", "balance"): ("unexplained_write", "medium"),
        ("D", "balance"): ("double_apply", "high"),
        ("E", "balance"): ("unexplained_write", "medium"),
        ("F", "status"): ("stale_overwrite", "high"),
    }
    ev = {k: json.loads(r["evidence"]) for k, r in found.items()}
    assert ev[("A", "balance")]["overlapping_runs"] == [[1, 2]]
    assert ev[("A", "balance")]["lost_runs"] == [1]
    assert ev[("A", "balance")]["first_divergence_at"] == "2026-01-01T12:00:05+00:00"
    assert [r["id"] for r in ev[("A", "balance")]["runs"]] == [10, 1, 2]
    assert ev[("B", "balance")]["overlapping_runs"] == [[3, 4]]
    assert ev[("C", "balance")]["overlapping_runs"] == []
    assert ev[("D", "balance")]["retried_runs"] == [7]
    assert ev[("D", "balance")]["retries"] == [[6, 7]]
    assert ev[("E", "balance")]["runs"] == [] and ev[("E", "balance")]["runs_total"] == 0
    assert ev[("F", "status")]["stale_row"]["run_id"] == 8
    assert ev[("F", "status")]["overwritten_row"]["value"] == "closed"
    assert ev[("F", "status")]["overlapping_runs"] == [[8, 9]]
    assert ev[("F", "status")]["jobs"] == ["set_status"]
    run = ev[("D", "balance")]["runs"][0]
    assert run == {
        "id": 6,
        "job": "deposit",
        "worker": None,
        "attempt": 1,
        "status": "failed",
        "started_at": "2026-01-01T12:00:00",
        "finished_at": "2026-01-01T12:00:01",
    }
    counts = result.summary["counts"]
    assert counts["by_cause"] == {
        "unexplained_write": 2,
        "lost_update": 1,
        "unknown": 1,
        "double_apply": 1,
        "stale_overwrite": 1,
    }
    assert counts["by_job"]["charge"]["by_cause"] == {"lost_update": 1, "unknown": 1}
    # one race each for charge and deposit: the larger |delta| (12 against 3) goes first
    assert result.summary["fix_first"] == {
        "job": "deposit",
        "findings": 1,
        "reason": "deposit is blamed for 1 finding(s): 1 double apply(s); total |delta| 12",
    }


def test_batches_of_keys_give_the_same_evidence(backend, tmp_path, monkeypatch):
    with backend.engine.begin() as conn:
        build(conn)
    _, whole = audit(backend, tmp_path, name="whole")
    monkeypatch.setattr(attribution, "BATCH_KEYS", 2)
    _, batched = audit(backend, tmp_path, name="batched")
    assert {k: (r["cause"], r["evidence"]) for k, r in batched.items()} == {
        k: (r["cause"], r["evidence"]) for k, r in whole.items()
    }


def test_without_run_ids_time_windows_give_medium_confidence(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    _, found = audit(backend, tmp_path, SPEC.replace('run_id = "run_id"\n', ""))
    causes = {k: (r["cause"], json.loads(r["evidence"])["confidence"]) for k, r in found.items()}
    assert causes[("A", "balance")] == ("lost_update", "medium")
    assert causes[("D", "balance")] == ("double_apply", "medium")
    assert causes[("E", "balance")] == ("unexplained_write", "medium")
    # Without run ids the stale row is still named, by the overlapping runs.
    assert causes[("F", "status")] == ("stale_overwrite", "high")


def test_entities_without_a_job_log_are_not_attributed(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    spec = SPEC.split("[job_logs.runs]")[0]
    result, found = audit(backend, tmp_path, spec)
    assert len(found) == 6
    assert {r["cause"] for r in found.values()} == {None}
    assert {r["evidence"] for r in found.values()} == {None}
    assert result.summary["counts"]["by_cause"] == {} and result.summary["fix_first"] is None


@pytest.mark.parametrize("where", ["job <> 'charge'"])
def test_a_job_log_where_filters_runs(backend, tmp_path, where):
    with backend.engine.begin() as conn:
        build(conn)
    spec = SPEC.replace(
        'finished_at = "finished_at"', f'finished_at = "finished_at"\nwhere = "{where}"'
    )
    _, found = audit(backend, tmp_path, spec)
    assert found[("A", "balance")]["cause"] == "unexplained_write"
    assert json.loads(found[("A", "balance")]["evidence"])["runs"][0]["id"] == 10


def test_report_shows_causes_and_timelines_escaped(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
        conn.execute(runs.update().where(runs.c.id == 1).values(job="<script>alert(1)</script>"))
    result, _ = audit(backend, tmp_path)
    html = result.report_path.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; #1" in html
    # A, B and F (overlapping pairs): two overlapping runs each; D: its retry
    assert html.count('<rect class="run overlap"') == 6
    assert html.count('<rect class="run retried"') == 1
    assert "Fix first:" in html and "double_apply" in html


def test_a_text_job_log_key_matches_an_integer_entity_key(backend, tmp_path):
    backend.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    backend.execute(
        "CREATE TABLE item_events (id INTEGER PRIMARY KEY, item INTEGER NOT NULL, "
        "delta INTEGER NOT NULL, run_id INTEGER)"
    )
    backend.execute(
        "CREATE TABLE item_runs (id INTEGER PRIMARY KEY, item_ref VARCHAR(16), "
        "job VARCHAR(16) NOT NULL, started_at VARCHAR(32) NOT NULL, finished_at VARCHAR(32))"
    )
    backend.execute("INSERT INTO items VALUES (1004, 2), (1005, 5)")
    backend.execute(
        "INSERT INTO item_events VALUES (1, 1004, 1, 1), (2, 1004, 2, 2), (3, 1005, 5, 3)"
    )
    backend.execute(
        "INSERT INTO item_runs VALUES (1, '1004', 'add', '2026-01-01T00:00:00', "
        "'2026-01-01T00:00:10'), (2, '1004', 'add', '2026-01-01T00:00:05', "
        "'2026-01-01T00:00:15'), (3, '1005', 'add', '2026-01-01T00:01:00', NULL), "
        "(4, ' 1004', 'add', '2026-01-01T00:00:01', '2026-01-01T00:00:02')"
    )
    spec = """
version = 1
[streams.e]
table = "item_events"
key = ["item"]
order_by = ["id"]
run_id = "run_id"
[entities.items]
table = "items"
key = ["id"]
[entities.items.columns.n]
stream = "e"
fold = "sum"
value = "delta"
[job_logs.runs]
table = "item_runs"
entity = "items"
key = ["item_ref"]
name = "job"
started_at = "started_at"
finished_at = "finished_at"
"""
    _, found = audit(backend, tmp_path, spec)
    assert set(found) == {(1004, "n")}
    evidence = json.loads(found[(1004, "n")]["evidence"])
    assert found[(1004, "n")]["cause"] == "lost_update"
    assert evidence["overlapping_runs"] == [[1, 2]]  # run 4's ' 1004' is another key
    assert evidence["lost_runs"] == [1]


@pytest.mark.scenario("bad data: malformed JSON in a job log's key")
def test_malformed_json_in_job_args_is_a_clear_error(backend, tmp_path):
    """MariaDB would read it as NULL (no run matches, a wrong cause): every engine refuses."""
    from audit.errors import DatabaseError, DataError

    with backend.engine.begin() as conn:
        build(conn)
        conn.execute(runs.update().where(runs.c.id == 2).values(args='{"account": "A",'))
    spec = parse_spec(
        SPEC.replace("version = 1", f'version = 1\n[database]\nurl = "{backend.url}"')
    )
    with pytest.raises((DataError, DatabaseError)) as info:
        run_audit(spec, out=tmp_path / "a", write_report=False)
    message = str(info.value)
    assert "\n" not in message
    if backend.name == "postgresql":  # the engine itself refuses to read it
        assert "invalid input syntax for type json" in message
    else:
        assert isinstance(info.value, DataError)
        assert message == (
            "job_logs.runs.key[0]: 1 row(s) of table 'runs' hold malformed JSON in column 'args'"
        )
    assert not (tmp_path / "a").exists()
