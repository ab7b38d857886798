"""Audit -> plan -> approve -> apply -> verify, and every refusal, on every engine."""

from __future__ import annotations

import gc
import json

import pytest
import sqlalchemy as sa

from audit import parse_spec, run_audit
from audit.errors import GuardFailedError, RefusedError
from drift import demo
from drift.cli import main
from remediate.apply import apply_plan
from remediate.approval import approve
from tests.remediation_helpers import audited_shop, findings, shop_spec, table_state


def test_four_commands_fix_the_shop(backend, tmp_path, capsys):
    audit = audited_shop(backend, tmp_path)
    spec = shop_spec(backend)
    assert main(["approve", str(audit), "--by", "alice", "--note", "INC-42"]) == 0
    assert main(["apply", str(audit), "--db", backend.url]) == 0
    out = capsys.readouterr().out
    assert "changed 5 row(s)" in out
    assert main(["verify", str(audit), "--db", backend.url]) == 0
    assert findings(spec, backend, tmp_path, "after") == set()

    with backend.engine.connect() as conn:
        log = conn.execute(sa.text("SELECT * FROM drift_remediation_log")).mappings().one()
        rows = conn.execute(
            sa.text("SELECT * FROM drift_remediation_rows ORDER BY action_id")
        ).mappings()
        rows = [dict(r) for r in rows]
    plan = json.loads((audit / "plan" / "plan.json").read_text())
    assert log["plan_id"] == plan["plan_id"] and log["outcome"] == "applied"
    assert log["approvers"] == "alice" and log["rows_changed"] == 5
    assert [r["action_id"] for r in rows] == [1, 2, 3, 4, 5]
    by_id = {r["action_id"]: r for r in rows}
    on_hand = {a["id"]: a for a in plan["actions"] if a["column"] == "on_hand"}
    for action_id, action in on_hand.items():
        assert json.loads(by_id[action_id]["before_value"]) == action["before"]
        assert json.loads(by_id[action_id]["after_value"]) == action["after"]


@pytest.mark.scenario("dry run changes nothing")
def test_dry_run_reports_and_changes_nothing(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    backend.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 1004")
    before = table_state(backend, "inventory", "orders", "drift_remediation_log")
    result = apply_plan(audit, backend.url, dry_run=True)
    assert table_state(backend, "inventory", "orders", "drift_remediation_log") == before
    assert {c["action_id"] for c in result.changes} == {1, 2, 3, 5}
    assert [(f["action_id"], f["key"]) for f in result.guard_failures] == [(4, "[1004]")]
    assert "cancelled" in result.guard_failures[0]["reason"]


@pytest.mark.scenario("dry run changes nothing")
def test_a_dry_run_leaves_no_history_tables_behind(backend, tmp_path):
    """Without history tables, a dry run uses temporary ones: the schema is as it was,
    and a real apply afterwards creates and fills the real ones."""
    audit = audited_shop(backend, tmp_path)

    def tables() -> list[str]:
        with backend.engine.connect() as conn:
            return sorted(sa.inspect(conn).get_table_names())

    before = tables()
    assert not [t for t in before if t.startswith("drift_remediation")]
    result = apply_plan(audit, backend.url, dry_run=True)
    assert {c["action_id"] for c in result.changes} == {1, 2, 3, 4, 5}
    assert tables() == before
    approve(audit, "alice")
    assert apply_plan(audit, backend.url).rows_changed == 5
    state = table_state(backend, "drift_remediation_log", "drift_remediation_rows")
    assert len(state["drift_remediation_log"]) == 1
    assert len(state["drift_remediation_rows"]) == 5


@pytest.mark.scenario("all-or-nothing apply: a missed guard changes nothing")
def test_a_missed_guard_aborts_the_whole_apply(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    approve(audit, "alice")
    backend.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = 1004")
    before = table_state(backend, "inventory", "orders", "drift_remediation_log")
    with pytest.raises(GuardFailedError, match="action 4"):
        apply_plan(audit, backend.url)
    assert table_state(backend, "inventory", "orders", "drift_remediation_log") == before


@pytest.mark.scenario("apply refusals (approval, tampering, HMAC, target, rollback)")
def test_refusals(sqlite_backend, tmp_path, capsys, monkeypatch):
    backend = sqlite_backend
    audit = audited_shop(backend, tmp_path)
    plan = audit / "plan"
    url = backend.url

    def refused(*args: str) -> str:
        before = table_state(backend, "inventory", "orders")
        assert main(list(args)) == 2
        assert table_state(backend, "inventory", "orders") == before
        return capsys.readouterr().err.strip()

    assert refused("apply", str(plan), "--db", url) == (
        f"drift: refused: the plan is not approved (run: drift approve {plan} --by NAME)"
    )
    approve(plan, "alice")
    assert "needs 2 approver(s), it has 1 (alice)" in refused(
        "apply", str(plan), "--db", url, "--require", "2"
    )
    # Tampering with fix.sql after approval.
    original = (plan / "fix.sql").read_text()
    (plan / "fix.sql").write_text(original + "\nDELETE FROM orders;\n")
    assert "the plan's files changed after approval" in refused("apply", str(plan), "--db", url)
    (plan / "fix.sql").write_text(original)
    # A forged approval when approvals are signed.
    monkeypatch.setenv("DRIFT_APPROVAL_KEY", "s3cret")
    assert "the approval by alice does not verify with DRIFT_APPROVAL_KEY" in refused(
        "apply", str(plan), "--db", url
    )
    approvals = json.loads((plan / "approvals.json").read_text())
    approvals["approvals"][0]["hmac"] = "0" * 64
    (plan / "approvals.json").write_text(json.dumps(approvals))
    assert "does not verify" in refused("apply", str(plan), "--db", url)
    (plan / "approvals.json").unlink()
    approve(plan, "alice")
    monkeypatch.setenv("DRIFT_APPROVAL_KEY", "another key")
    assert "does not verify" in refused("apply", str(plan), "--db", url)
    monkeypatch.setenv("DRIFT_APPROVAL_KEY", "s3cret")
    # The wrong target: a copy of the shop in another file.
    other = tmp_path / "other.db"
    other.write_bytes((tmp_path / "test.db").read_bytes())
    message = refused("apply", str(plan), "--db", f"sqlite:///{other}")
    assert "refused: the target is not the audited database" in message
    assert "--target-override REASON" in message
    # A rollback before the fix, and without its own approval.
    assert "refused: the rollback is not approved" in refused("rollback", str(plan), "--db", url)
    approve(plan, "bob", purpose="rollback")
    assert "was never applied; nothing to roll back" in refused("rollback", str(plan), "--db", url)
    # Apply, then apply again.
    assert main(["apply", str(plan), "--db", url]) == 0
    capsys.readouterr()
    assert "was already applied" in refused("apply", str(plan), "--db", url)


def test_target_override_is_logged(sqlite_backend, tmp_path):
    audit = audited_shop(sqlite_backend, tmp_path)
    approve(audit, "alice")
    other = tmp_path / "other.db"
    other.write_bytes((tmp_path / "test.db").read_bytes())
    with pytest.raises(RefusedError):
        apply_plan(audit, f"sqlite:///{other}")
    result = apply_plan(audit, f"sqlite:///{other}", target_override="restored copy, INC-42")
    assert result.rows_changed == 5
    engine = sa.create_engine(f"sqlite:///{other}")
    with engine.connect() as conn:
        reason = conn.execute(sa.text("SELECT target_override FROM drift_remediation_log"))
        assert reason.scalar_one() == "restored copy, INC-42"
    engine.dispose()


def test_apply_pauses_the_cyclic_gc_and_restores_it(sqlite_backend, tmp_path):
    audit = audited_shop(sqlite_backend, tmp_path)
    approve(audit, "alice")
    during: list[bool] = []
    assert gc.isenabled()
    apply_plan(
        audit, sqlite_backend.url, dry_run=True, progress=lambda _: during.append(gc.isenabled())
    )
    assert during and not any(during)
    assert gc.isenabled()
    # Off before (the caller's choice), off after; and on again after a failure.
    gc.disable()
    try:
        apply_plan(audit, sqlite_backend.url, dry_run=True)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RefusedError):
        apply_plan(audit, sqlite_backend.url, batch_size=0)
    assert gc.isenabled()


@pytest.mark.scenario("rollback restores the state exactly")
def test_rollback_needs_its_own_approval_and_restores(backend, tmp_path):
    audit = audited_shop(backend, tmp_path)
    original = table_state(backend, "inventory", "orders")
    approve(audit, "alice")
    apply_plan(audit, backend.url)
    with pytest.raises(RefusedError, match="the rollback is not approved"):
        apply_plan(audit, backend.url, operation="rollback")
    approve(audit, "bob", purpose="rollback")
    assert main(["rollback", str(audit), "--db", backend.url]) == 0
    assert table_state(backend, "inventory", "orders") == original
    assert main(["rollback", str(audit), "--db", backend.url]) == 2
    assert main(["verify", str(audit), "--db", backend.url]) == 1


def test_replan_with_options(sqlite_backend, tmp_path, capsys):
    audit = audited_shop(sqlite_backend, tmp_path, delete_orphans=False)
    plan = json.loads((audit / "plan" / "plan.json").read_text())
    modes = [a["mode"] for a in plan["actions"]]
    # The unannounced event (last) is about a message, not a row: always manual.
    assert modes == ["delta", "delta", "manual", "cas", "insert", "manual"]
    assert "drift does not write messages" in plan["actions"][-1]["manual_reason"]
    approve(audit, "alice")
    assert main(["plan", str(audit), "--mode", "inventory.on_hand=cas", "--delete-orphans"]) == 0
    replanned = json.loads((audit / "plan" / "plan.json").read_text())
    assert [a["mode"] for a in replanned["actions"]] == [
        "cas",
        "cas",
        "delete",
        "cas",
        "insert",
        "manual",
    ]
    assert replanned["plan_id"] != plan["plan_id"]
    assert not (audit / "plan" / "approvals.json").exists()
    capsys.readouterr()
    assert main(["plan", str(audit), "--mode", "orders.status=delta"]) == 2
    assert "delta needs a sum or count column" in capsys.readouterr().err
    assert main(["plan", str(audit), "--mode", "inventory.on_hnd=cas"]) == 2
    assert 'did you mean "inventory.on_hand"' in capsys.readouterr().err


def test_a_password_in_the_spec_url_never_lands_and_the_flow_still_works(tmp_path, capsys):
    """The audit folder keeps a masked spec copy; plans are bound to that copy."""
    from sqlalchemy.engine import make_url

    from tests.conftest import make_backend, require_server

    require_server("postgresql")  # trusts local logins, so any password is accepted
    gen = make_backend("postgresql", tmp_path)
    backend = next(gen)
    try:
        with backend.engine.begin() as conn:
            demo.metadata.create_all(conn)
            demo.build_shop(conn)
        secret = "Sp3c-Secret-pw"
        url = make_url(backend.url).set(password=secret).render_as_string(hide_password=False)
        spec = tmp_path / "drift.toml"
        spec.write_text(demo.SPEC.replace('url = "sqlite:///shop.db"', f'url = "{url}"'))
        audit = tmp_path / "audit"
        assert main(["-q", "audit", "-c", str(spec), "-o", str(audit)]) == 1
        assert main(["approve", str(audit), "--by", "alice"]) == 0
        assert main(["-q", "apply", str(audit), "--db", url]) == 0
        assert main(["verify", str(audit), "--db", url]) == 0
        out, err = capsys.readouterr()
        texts = [out, err] + [
            p.read_bytes().decode("utf-8", "replace") for p in audit.rglob("*") if p.is_file()
        ]
        with backend.engine.connect() as conn:
            for table in ("drift_remediation_log", "drift_remediation_rows"):
                texts.append(repr(conn.execute(sa.text(f"SELECT * FROM {table}")).all()))
        assert len(texts) > 8
        assert all(secret not in text for text in texts)
        assert "***" in (audit / "drift.toml").read_text()
    finally:
        next(gen, None)


FLOAT_SPEC = """\
version = 1
[database]
url = "{url}"
[streams.ev]
table = "ev"
key = ["k"]
order_by = ["id"]
[entities.ent]
table = "ent"
key = ["k"]
[entities.ent.columns.total]
stream = "ev"
fold = "sum"
value = "amt"
[entities.ent.columns.hi]
stream = "ev"
fold = "max"
value = "amt"
"""


def test_plans_of_values_plan_json_gives_back_otherwise_are_approved_and_applied(backend, tmp_path):
    """A float of 1e20 reaches the plan as Decimal('1E+20') and comes back from plan.json
    as an int: the statements are rendered from what plan.json gives back, so approve and
    apply (which re-render them from plan.json's data) accept the plan."""
    backend.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, amt FLOAT)")
    backend.execute("CREATE TABLE ent (k INTEGER PRIMARY KEY, total FLOAT, hi FLOAT)")
    # (Sums whose float arithmetic is exact: a delta on a float column is float arithmetic.)
    backend.execute("INSERT INTO ev VALUES (1, 1, 1e20), (2, 1, 3e20), (3, 2, 0.25), (4, 3, 2e30)")
    backend.execute("INSERT INTO ent VALUES (1, 2e20, 2e20), (2, 0.5, 0.5)")
    spec = parse_spec(FLOAT_SPEC.format(url=backend.url))
    out = tmp_path / "audit"
    run_audit(spec, out=out, write_report=False)
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert {a["mode"] for a in plan["actions"]} == {"delta", "cas", "insert"}
    approve(out, "alice")
    assert apply_plan(out, backend.url).rows_changed == 5
    assert not run_audit(spec, out=tmp_path / "after", write_report=False).drift_found
