"""First divergence from outbox payloads that carry state, on every engine.

Each key's documented history says where its announced state first left the
state rebuilt from the stream; that message's time is the first divergence.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.errors import SpecError

metadata = sa.MetaData()
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("k", sa.String(8), primary_key=True),
    sa.Column("n", sa.Integer),
    sa.Column("status", sa.String(16)),
)
events = sa.Table(
    "counter_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k", sa.String(8), nullable=False),
    sa.Column("delta", sa.Integer),
    sa.Column("status", sa.String(16)),
)
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k", sa.String(8), nullable=False),
    sa.Column("event_id", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("created_at", sa.String(32), nullable=False),
)
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("k", sa.String(8)),
    sa.Column("job", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
)

SPEC = """
version = 1
[database]
url = "{url}"

[streams.changes]
table = "counter_events"
key = ["k"]
order_by = ["id"]

[entities.counters]
table = "counters"
key = ["k"]

[entities.counters.columns.n]
stream = "changes"
fold = "sum"
value = "delta"

[entities.counters.columns.status]
stream = "changes"
fold = "last"
value = "status"
where = "status IS NOT NULL"

[job_logs.runs]
table = "runs"
entity = "counters"
key = ["k"]
name = "job"
started_at = "started_at"
finished_at = "finished_at"

[outboxes.changes]
table = "messages"
entity = "counters"
key = ["k"]
stream = "changes"
announces = "event_id"
payload = "payload"
created_at = "created_at"

[outboxes.changes.state]
n = "state.n"
status = "state.status"
"""

# (id, key, delta, status, announced n, announced status)
HISTORY = [
    # A: the third writer computed from a stale count: it announced 8 after +2 (10 rebuilt).
    (1, "A", 5, None, 5, None),
    (2, "A", 3, None, 8, None),
    (3, "A", 2, None, 8, None),
    (4, "A", 1, None, 9, None),
    # B: every announced state follows the stream; the row was changed without an event.
    (5, "B", 4, None, 4, None),
    (6, "B", 1, None, 5, None),
    # C: the 'paid' writer announced the state it read ('new'), not the one it made.
    (7, "C", None, "new", None, "new"),
    (8, "C", None, "paid", None, "new"),
    (9, "C", None, "shipped", None, "shipped"),
]


def load(backend):
    with backend.engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(
            counters.insert(),
            [
                {"k": "A", "n": 9, "status": None},  # rebuilt 11
                {"k": "B", "n": 7, "status": None},  # rebuilt 5
                {"k": "C", "n": 0, "status": "paid"},  # rebuilt 'shipped'
            ],
        )
        conn.execute(
            events.insert(),
            [{"id": i, "k": k, "delta": d, "status": s} for i, k, d, s, _, _ in HISTORY],
        )
        conn.execute(
            messages.insert(),
            [
                {
                    "id": 100 + i,
                    "k": k,
                    "event_id": i,
                    "payload": json.dumps({"state": {"n": n, "status": st}}),
                    "created_at": f"2026-03-14T09:00:{i:02d}Z",
                }
                for i, k, _, _, n, st in HISTORY
            ],
        )


def test_first_divergence_is_the_first_message_that_left_the_stream(backend, tmp_path):
    load(backend)
    result = run_audit(
        parse_spec(SPEC.format(url=backend.url)), out=tmp_path / "a", write_report=False
    )
    rows = pq.read_table(result.findings_path).to_pylist()
    found = {
        (json.loads(r["key"])[0], r["column"]): json.loads(r["evidence"])
        for r in rows
        if r["kind"] == "mismatch"
    }
    assert set(found) == {("A", "n"), ("B", "n"), ("C", "status")}
    a = found[("A", "n")]
    assert a["first_divergence_at"] == "2026-03-14T09:00:03Z"
    assert (a["divergence"]["message"], a["divergence"]["outbox"]) == (103, "changes")
    assert (a["divergence"]["announced_state"], a["divergence"]["rebuilt_state"]) == ("8", "10")
    assert found[("B", "n")]["first_divergence_at"] is None  # no message ever disagreed
    assert "divergence" not in found[("B", "n")]
    c = found[("C", "status")]
    assert c["first_divergence_at"] == "2026-03-14T09:00:08Z"
    assert (c["divergence"]["announced_state"], c["divergence"]["rebuilt_state"]) == ("new", "paid")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            'nn = "state.n"',
            r"outboxes\.changes\.state\.nn: entity 'counters' audits no column "
            r"'nn' \(did you mean \"n\"\?\)",
        ),
        ('n = ""', r"outboxes\.changes\.state\.n: must be a path in the payload"),
    ],
)
def test_state_mapping_errors(state, message):
    text = SPEC.format(url="sqlite://").replace('n = "state.n"', state)
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_state_needs_a_payload():
    text = SPEC.format(url="sqlite://").replace('payload = "payload"\n', "")
    with pytest.raises(SpecError, match=r"outboxes\.changes\.state: needs payload"):
        parse_spec(text)


def test_a_fractional_initial_is_added_exactly(backend, tmp_path):
    """``initial = 0.5`` arrives from TOML as a float: the running sums add it as a decimal
    (a float plus the stream's Decimals raised TypeError and ended the audit)."""
    load(backend)
    with backend.engine.begin() as conn:  # every announced count 0.5 higher
        for i, _k, _, _, n, _ in HISTORY:
            if n is not None:
                conn.execute(
                    messages.update()
                    .where(messages.c.id == 100 + i)
                    .values(payload=json.dumps({"state": {"n": n + 0.5, "status": None}}))
                )
    spec = SPEC.replace('value = "delta"\n', 'value = "delta"\ninitial = 0.5\n', 1)
    result = run_audit(
        parse_spec(spec.format(url=backend.url)), out=tmp_path / "a", write_report=False
    )
    rows = pq.read_table(result.findings_path).to_pylist()
    found = {
        json.loads(r["key"])[0]: json.loads(r["evidence"])
        for r in rows
        if r["kind"] == "mismatch" and r["column"] == "n"
    }
    assert set(found) == {"A", "B", "C"}  # C: no delta, so 0.5 rebuilt against its 0
    a = found["A"]
    assert a["first_divergence_at"] == "2026-03-14T09:00:03Z"
    assert (a["divergence"]["announced_state"], a["divergence"]["rebuilt_state"]) == (
        "8.5",
        "10.5",
    )
    assert found["B"]["first_divergence_at"] is None
