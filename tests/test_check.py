"""drift check: thresholds, exit codes and the Prometheus textfile format."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drift.cli import main
from drift.demo import build_demo


@pytest.fixture
def shop(tmp_path):
    return build_demo(tmp_path / "shop")


def run(capsys, *args):
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ([], 1),  # any drift pages by default
        (["--max-rows", "5"], 0),  # the demo has exactly 5 drifted rows
        (["--max-rows", "4"], 1),
        (["--max-rows", "10", "--max-abs-delta", "15"], 0),  # |-3| + |-12| = 15
        (["--max-rows", "10", "--max-abs-delta", "14.5"], 1),
    ],
)
def test_thresholds_decide_the_exit_code(capsys, shop, tmp_path, monkeypatch, options, code):
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, "check", "-c", str(shop.spec), *options)
    assert got == code
    assert out.startswith("drift check ALERT" if code else "drift check OK")
    assert err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop"]  # no audit folder left


def test_json_says_why(capsys, shop):
    code, out, _ = run(
        capsys,
        "check",
        "-c",
        str(shop.spec),
        "--max-abs-delta",
        "1",
        "--max-rows",
        "9",
        "--format",
        "json",
    )
    data = json.loads(out)
    assert code == 1 and data["crossed"] is True
    assert data["reasons"] == ["total |delta| 15 > --max-abs-delta 1"]
    assert data["drifted_rows"] == 5 and data["abs_delta_sum"] == 15.0
    assert {(f["entity"], f["column"], f["kind"], f["findings"]) for f in data["findings"]} == {
        ("inventory", "on_hand", "mismatch", 2),
        ("inventory", None, "orphan_row", 1),
        ("inventory", None, "unannounced_event", 1),
        ("orders", "status", "mismatch", 1),
        ("orders", None, "missing_row", 1),
    }


def test_prometheus_text_parses_and_textfile_is_atomic(capsys, shop, tmp_path):
    prom = tmp_path / "collector" / "drift.prom"
    prom.parent.mkdir()
    code, out, _ = run(
        capsys, "check", "-c", str(shop.spec), "--format", "prometheus", "--textfile", str(prom)
    )
    assert code == 1
    assert (
        prom.read_text().split("drift_last_success_timestamp")[0]
        == (out + "\n").split("drift_last_success_timestamp")[0]
    )
    assert [p.name for p in prom.parent.iterdir()] == ["drift.prom"]
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert set(families) >= {
        "drift_findings",
        "drift_abs_delta_sum",
        "drift_audit_duration_seconds",
        "drift_last_success_timestamp",
        "drift_drifted_rows",
        "drift_threshold_crossed",
    }
    samples = {
        (s.labels["entity"], s.labels["column"], s.labels["kind"]): s.value
        for s in families["drift_findings"].samples
    }
    assert samples[("inventory", "on_hand", "mismatch")] == 2
    assert samples[("orders", "", "missing_row")] == 1
    assert samples[("orders", "", "duplicate_key")] == 0  # zero series are exported too
    assert families["drift_abs_delta_sum"].samples[0].value == 15
    assert families["drift_threshold_crossed"].samples[0].value == 1
    assert families["drift_audit_duration_seconds"].samples[0].value > 0


def test_hostile_label_values_are_escaped():
    from audit.check import CheckResult, Thresholds, render_prometheus

    summary = {
        "counts": {"drifted_rows": 1, "abs_delta": {}, "by_kind": {}},
        "timings": {"total": 0.5},
        "entities": {},
    }
    hostile = 'in"ven\\tory\nx'
    result = CheckResult(summary, Thresholds(), ("x",), 1.0, ((hostile, "c", "mismatch", 3),), None)
    (family,) = [
        f
        for f in text_string_to_metric_families(render_prometheus(result))
        if f.name == "drift_findings"
    ]
    assert family.samples[0].labels["entity"] == hostile


def test_errors_exit_2_and_keep_the_audit_folder_on_request(capsys, shop, tmp_path):
    code, _, err = run(capsys, "check", "-c", str(tmp_path / "missing.toml"))
    assert code == 2 and err.startswith("drift: spec file not found")
    code, _, _ = run(capsys, "check", "-c", str(shop.spec), "--out", str(tmp_path / "kept"))
    assert code == 1 and (tmp_path / "kept" / "report.html").is_file()


def test_since_last_checks_only_what_changed(capsys, shop, tmp_path):
    import sqlite3

    spec = str(shop.spec)
    # The first incremental check is a full audit: the demo's 5 drifted rows.
    code, out, _ = run(capsys, "check", "-c", spec, "--since-last", "--max-rows", "5")
    assert code == 0 and "5 drifted row(s)" in out
    assert (shop.folder / ".drift-state.json").is_file()
    # Nothing new since: nothing to check, nothing to page about.
    code, out, _ = run(capsys, "check", "-c", spec, "--since-last")
    assert (code, out.strip()) == (0, "drift check OK: 0 drifted row(s) (no findings)")
    # A worker records a shipment but never updates the count: new drift on SKU-001 only.
    db = sqlite3.connect(shop.database)
    db.execute(
        "INSERT INTO stock_events (sku, kind, qty, created_at) "
        "VALUES ('SKU-001', 'shipped', 2, '2026-03-14T10:00:00Z')"
    )
    db.commit()
    db.close()
    code, out, _ = run(capsys, "check", "-c", spec, "--since-last", "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["drifted_rows"] == 1
    assert [(f["entity"], f["kind"]) for f in data["findings"]] == [("inventory", "mismatch")]
    code, _, err = run(capsys, "check", "-c", spec, "--state", str(tmp_path / "s.json"))
    assert code == 2 and err == "drift: --state only applies to --since-last audits\n"
