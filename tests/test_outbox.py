"""Outbox checks and witnesses on every engine, on a tiny outbox with documented defects.

Stream rows (events) 1..6 for keys K1/K2; messages:

* event 1: announced once, published -- fine;
* event 2: announced twice -- duplicate_announcement;
* event 3: never announced -- unannounced_event;
* event 4: announced, unpublished since 2000 -- stuck_message;
* event 5: announced, unpublished, created in the future -- not stuck;
* event 6: announced in the payload only (the outbox's ``where`` ignores
  other message types) -- unannounced_event, because its message does not count;
* message for event 99 -- orphan_message.

Each message's payload carries the key's running balance; event 2's second
message says 999 where the events say 15 -- one witness disagreement for K1.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.errors import SpecError
from audit.outbox import parse_duration
from drift.cli import main

metadata = sa.MetaData()
balances = sa.Table(
    "balances",
    metadata,
    sa.Column("k", sa.String(8), primary_key=True),
    sa.Column("balance", sa.Integer),
)
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k", sa.String(8), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("aggregate", sa.String(8), nullable=False),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("published_at", sa.String(32)),
)

SPEC = """
version = 1

[streams.events]
table = "events"
key = ["k"]
order_by = ["id"]
time = "at"

[streams.announced]
table = "messages"
key = ["aggregate"]
order_by = ["id"]

[entities.balances]
table = "balances"
key = ["k"]

[entities.balances.columns.balance]
stream = "events"
fold = "sum"
value = "amount"
also = [
  { stream = "announced", fold = "last", value = { json = "payload", path = "state.balance" } },
]

[outboxes.events]
table = "messages"
entity = "balances"
key = ["aggregate"]
stream = "events"
announces = "event_id"
type = "kind"
payload = "payload"
created_at = "created_at"
published_at = "published_at"
where = "kind = 'event'"
"""

OLD, FUTURE, PUBLISHED = "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "2000-01-01T00:00:01Z"


def build(conn: sa.Connection) -> None:
    metadata.create_all(conn)
    conn.execute(balances.insert(), [{"k": "K1", "balance": 15}, {"k": "K2", "balance": 33}])
    amounts = {1: ("K1", 10), 2: ("K1", 5), 3: ("K1", 1), 4: ("K2", 30), 5: ("K2", 2), 6: ("K2", 1)}
    conn.execute(
        events.insert(),
        [{"id": i, "k": k, "amount": n, "at": OLD} for i, (k, n) in amounts.items()],
    )
    conn.execute(balances.update().where(balances.c.k == "K1").values(balance=16))

    def msg(id_, k, event, balance, created, published, kind="event"):
        payload = json.dumps({"state": {"balance": balance}, "event": event})
        return {
            "id": id_,
            "aggregate": k,
            "event_id": event,
            "kind": kind,
            "payload": payload,
            "created_at": created,
            "published_at": published,
        }

    conn.execute(
        messages.insert(),
        [
            msg(1, "K1", 1, 10, OLD, PUBLISHED),
            msg(2, "K1", 2, 15, OLD, PUBLISHED),
            msg(3, "K1", 2, 15, OLD, PUBLISHED),
            msg(4, "K2", 4, 30, OLD, None),
            msg(5, "K2", 5, 32, FUTURE, None),
            msg(6, "K2", 6, 33, OLD, PUBLISHED, kind="audit"),
            msg(7, "K1", 99, 16, OLD, PUBLISHED),
            msg(8, "K1", 2, 999, OLD, PUBLISHED, kind="audit"),
        ],
    )


def findings(backend, tmp_path, spec_text=SPEC, **kwargs):
    spec = parse_spec(spec_text + f'\n[database]\nurl = "{backend.url}"\n')
    result = run_audit(spec, out=tmp_path / "audit", **kwargs)
    return result, pq.read_table(result.findings_path).to_pylist()


def test_outbox_checks_return_exactly_the_bad_rows(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    result, rows = findings(backend, tmp_path)
    got = {
        (r["kind"], r["key"], json.dumps(json.loads(r["extra"]), sort_keys=True))
        for r in rows
        if r["kind"] != "witness_disagreement"
    }

    def extra(**values):
        return json.dumps({"outbox": "events", **values}, sort_keys=True)

    assert got == {
        ("unannounced_event", '["K1"]', extra(event=3, run_id=None)),
        ("unannounced_event", '["K2"]', extra(event=6, run_id=None)),
        ("duplicate_announcement", '["K1"]', extra(event=2, messages=2)),
        ("orphan_message", '["K1"]', extra(message=7, announces=99)),
        (
            "stuck_message",
            '["K2"]',
            extra(
                message=4,
                announces=4,
                age_seconds=next(
                    json.loads(r["extra"])["age_seconds"]
                    for r in rows
                    if r["kind"] == "stuck_message"
                ),
                snapshot_at=result.summary["snapshot"]["taken_at"] and _snapshot(rows),
            ),
        ),
    }
    stuck = next(r for r in rows if r["kind"] == "stuck_message")
    assert json.loads(stuck["extra"])["age_seconds"] > 25 * 365 * 86400
    dup = next(r for r in rows if r["kind"] == "duplicate_announcement")
    assert json.loads(dup["actual"]) == {"messages": 2, "first_id": 2, "last_id": 3}
    counts = result.summary["counts"]
    assert counts["drifted_rows"] == 0  # the balances themselves are right
    assert counts["by_kind"]["unannounced_event"] == 2


def _snapshot(rows):
    return next(json.loads(r["extra"])["snapshot_at"] for r in rows if r["kind"] == "stuck_message")


def test_stuck_after_is_measured_against_the_snapshot(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    _, rows = findings(backend, tmp_path, stuck_after=dt.timedelta(days=365 * 2000))
    assert "stuck_message" not in {r["kind"] for r in rows}


def test_a_witness_that_disagrees_is_a_finding(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    spec = SPEC.replace("where = \"kind = 'event'\"", "")
    _, rows = findings(backend, tmp_path, spec)
    witness = [r for r in rows if r["kind"] == "witness_disagreement"]
    # K1: the last message (id 8) announces 999, the events sum to 16. K2: 33 agrees.
    assert [(r["key"], r["column"], r["expected"], r["actual"]) for r in witness] == [
        ('["K1"]', "balance", "16", "999")
    ]
    assert witness[0]["delta"] == 16 - 999
    # Without the where filter, message 6 announces event 6 and message 8 duplicates event 2.
    kinds = sorted(r["kind"] for r in rows if r["kind"] != "witness_disagreement")
    assert kinds == [
        "duplicate_announcement",
        "orphan_message",
        "stuck_message",
        "unannounced_event",
    ]
    dup = next(r for r in rows if r["kind"] == "duplicate_announcement")
    assert json.loads(dup["actual"])["messages"] == 3


def test_json_announces_are_compared_as_text(backend, tmp_path):
    with backend.engine.begin() as conn:
        build(conn)
    spec = SPEC.replace(
        'announces = "event_id"', 'announces = { json = "payload", path = "event" }'
    )
    _, rows = findings(backend, tmp_path, spec)
    kinds = sorted((r["kind"], r["key"]) for r in rows if r["kind"] != "witness_disagreement")
    assert kinds == [
        ("duplicate_announcement", '["K1"]'),
        ("orphan_message", '["K1"]'),
        ("stuck_message", '["K2"]'),
        ("unannounced_event", '["K1"]'),
        ("unannounced_event", '["K2"]'),
    ]


def test_stuck_after_option_parses_durations(sqlite_backend, tmp_path, capsys):
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("5m") == dt.timedelta(minutes=5)
    assert parse_duration("2h") == dt.timedelta(hours=2)
    assert parse_duration("1.5d") == dt.timedelta(hours=36)
    assert parse_duration("30") == dt.timedelta(seconds=30)
    for bad in ("", "m", "-5m", "5x", "nan"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with sqlite_backend.engine.begin() as conn:
        build(conn)
    spec = tmp_path / "drift.toml"
    spec.write_text(SPEC + f'\n[database]\nurl = "{sqlite_backend.url}"\n')
    assert main(["audit", "-c", str(spec), "--stuck-after", "soon", "-o", str(tmp_path / "a")]) == 2
    assert "--stuck-after" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    code = main(
        ["-q", "audit", "-c", str(spec), "--stuck-after", "3000000d", "-o", str(tmp_path / "b")]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "stuck_message" not in out and "unannounced_event 2" in out


def test_outbox_spec_errors_name_the_key():
    base = SPEC.split("[outboxes.events]")[0]
    with pytest.raises(
        SpecError, match=r"outboxes.o.stream: unknown stream 'event' \(did you mean"
    ):
        parse_spec(
            base
            + '[outboxes.o]\ntable = "m"\nentity = "balances"\nkey = ["a"]\nstream = "event"\n'
            + 'announces = "e"\ncreated_at = "c"\n'
        )
    with pytest.raises(SpecError, match=r"outboxes.o: unknown key 'anounces' \(did you mean"):
        parse_spec(
            base
            + '[outboxes.o]\ntable = "m"\nentity = "balances"\nkey = ["a"]\nstream = "events"\n'
            + 'anounces = "e"\ncreated_at = "c"\n'
        )
