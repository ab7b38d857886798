"""The HTML report: structure, numbers, hostile values, scale, attribution and plan."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from audit import run_audit
from audit.charts import delta_bins, time_bins
from audit.errors import AuditFolderError
from audit.findings import Finding, key_to_json
from audit.report import (
    Cell,
    build_report,
    cell_html,
    clip,
    render_html,
    render_report,
    rows_html,
    safe_json,
    value_cell,
)
from drift.cli import main
from drift.demo import build_demo
from tests.htmltree import Node, parse
from tests.reportdata import HOSTILE, evidence_row, hostile_folder, make_folder


@pytest.fixture(scope="module")
def demo_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    shop = build_demo(folder / "shop")
    result = run_audit(shop.spec, out=folder / "audit", command="drift audit -c drift.toml")
    return result.out_dir


def page(folder: Path) -> Node:
    return parse((folder / "report.html").read_text(encoding="utf-8"))


def cells(row: Node) -> list[str]:
    return [td.text.strip() for td in row.children if isinstance(td, Node) and td.tag == "td"]


def visible_findings(doc: Node) -> list[Node]:
    return doc.by_id("findings-table").find_all("tbody", cls="finding")


# --------------------------------------------------------------------------- demo


def test_demo_report_header_and_cards(demo_audit):
    summary = json.loads((demo_audit / "summary.json").read_text())
    doc = page(demo_audit)
    assert doc.by_id("database").text == summary["database"]["url"]
    assert doc.by_id("snapshot").text == summary["snapshot"]["taken_at"]
    assert doc.by_id("spec-sha256").text == f"sha256:{summary['spec']['sha256']}"
    assert doc.by_id("version").text == summary["version"]
    marks = {cells(r)[0]: cells(r) for r in doc.by_id("watermarks").find_all("tr")[1:]}
    assert marks["stock"][2] == json.dumps(summary["watermarks"]["stock"]["value"])
    assert marks["stock"][3] == str(summary["watermarks"]["stock"]["rows"])
    assert set(marks) == {"stock", "order_events"}
    # The audit proposes a plan; nobody has approved it yet.
    plan = json.loads((demo_audit / "plan" / "plan.json").read_text())
    assert doc.by_id("plan-id").text == plan["plan_id"]
    assert doc.by_id("plan-status").text == "not approved"

    def card(name: str) -> str:
        return doc.by_id(f"card-{name}").find(cls="n").text

    assert card("entities") == "2"
    assert card("rows") == "65"  # 25 inventory rows + 40 orders
    assert card("drifted") == "5"
    assert card("findings") == "6"  # 5 drifted rows and 1 unannounced event
    kinds = {
        li.find(cls="badge").text: li.find(cls="count").text
        for li in doc.by_id("by-kind").find_all("li")
    }
    assert kinds == {
        "mismatch": "3",
        "missing_row": "1",
        "orphan_row": "1",
        "unannounced_event": "1",
    }
    on_hand = doc.by_id("by-entity").find("tr", data_column="on_hand")
    assert on_hand.find(cls="abs-total").text == "15"  # |-3| + |-12|
    assert on_hand.find(cls="abs-max").text == "12"


def test_demo_report_charts(demo_audit):
    doc = page(demo_audit)
    time_chart = doc.by_id("chart-time")
    counts = [
        int(re.search(r": (\d+) key", r.find("title").text)[1]) for r in time_chart.find_all("rect")
    ]
    # Five keys have a last stream row (4 drifted, SKU-009's unannounced event); the orphan
    # has none.
    assert sum(counts) == 5
    assert "1 drifted key(s) have no stream time" in time_chart.text
    (delta_chart,) = doc.find_all(cls="chart-delta")
    assert "inventory.on_hand" in delta_chart.text
    titles = sorted(r.find("title").text for r in delta_chart.find_all("rect"))
    assert titles == ["-12: 1 finding(s)", "-3: 1 finding(s)"]


def test_demo_report_findings_table_and_evidence(demo_audit, tmp_path):
    doc = page(demo_audit)
    bodies = visible_findings(doc)
    rows = [cells(b.find("tr", cls="main")) for b in bodies]
    # Row-level kinds first, then by |delta|.
    assert [r[4] for r in rows] == [
        "orphan_row",
        "missing_row",
        "mismatch",
        "mismatch",
        "unannounced_event",
        "mismatch",
    ]
    assert [(r[2], r[7]) for r in rows[2:4]] == [('["SKU-006"]', "-12"), ('["SKU-003"]', "-3")]
    assert rows[5][2:7] == ["[1004]", "status", "mismatch", '"shipped"', '"paid"']
    lost = bodies[3]
    stream = lost.find("table", cls="stream-rows")
    header = [th.text for th in stream.find("thead").find_all("th")]
    assert header[:2] == ["id order_by", "sku key"] and header[-1] == "created_at time"
    shown = [cells(tr) for tr in stream.find("tbody").find_all("tr")]
    import sqlite3

    db = sqlite3.connect(demo_audit.parent / "shop" / "shop.db")
    truth = db.execute(
        "SELECT id, sku, kind, qty FROM stock_events WHERE sku = 'SKU-003' ORDER BY id DESC"
    ).fetchall()
    db.close()
    assert [tuple(r[:4]) for r in shown] == [tuple(str(v) for v in t) for t in truth]
    data = json.loads(doc.by_id("drift-data").text)
    assert [r[3] for r in data["rows"]] == [r[2] for r in rows]
    assert data["total"] == 6
    assert "drift audit -c drift.toml" in doc.by_id("command").text
    # The folder is named as the user knows it, never as the hidden staging folder.
    html = (demo_audit / "report.html").read_text(encoding="utf-8")
    assert ".partial" not in html and "drift report audit" in html


def test_report_is_self_contained(demo_audit):
    html = (demo_audit / "report.html").read_text(encoding="utf-8")
    doc = parse(html)
    for node in doc.iter():
        assert "src" not in node.attrs, node.tag
        href = node.attrs.get("href")
        if href is not None:
            assert href.startswith(("#", "data:")) or "/" not in href and ":" not in href, href
    scripts = doc.find_all("script")
    assert [s.attrs.get("type") for s in scripts] == ["application/json", None]
    style = doc.find("style").text
    csp = doc.find("meta", http_equiv="Content-Security-Policy").attrs["content"]

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{digest(scripts[1].text)}'" in csp
    assert f"style-src 'sha256-{digest(style)}'" in csp
    assert "default-src 'none'" in csp
    assert "@media print" in style


def test_findings_csv_written_with_the_audit(demo_audit):
    with open(demo_audit / "findings.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    table = pq.read_table(demo_audit / "findings.parquet").to_pylist()
    assert [(r["entity"], r["key"], r["kind"]) for r in rows] == [
        (r["entity"], r["key"], r["kind"]) for r in table
    ]


# --------------------------------------------------------------------------- hostile


def test_hostile_values_render_as_inert_text(tmp_path):
    folder = hostile_folder(tmp_path / "hostile")
    render_report(folder)
    html = (folder / "report.html").read_text(encoding="utf-8")
    doc = parse(html)
    tags = {n.tag for n in doc.iter()}
    assert "img" not in tags
    assert len(doc.find_all("script")) == 2
    for node in doc.iter():
        for name in node.attrs:
            assert not name.startswith("on"), (node.tag, name)
        assert not (node.attrs.get("href") or "").startswith("javascript")
    assert "hunter2" not in html
    # The values survive exactly, as text.
    keys = [b.find("td", cls="key").text for b in visible_findings(doc)]
    expected_keys = [key_to_json([t, i]) for i, t in enumerate(HOSTILE)]
    assert sorted(keys) == sorted([*expected_keys, key_to_json([HOSTILE[2]])])
    entities = {b.find("td", cls="entity").text for b in visible_findings(doc)}
    assert entities == {HOSTILE[1]}
    whys = {p.text for p in doc.find_all("p", cls="why")}
    assert whys == set(HOSTILE)
    sql = {p.text for p in doc.find_all("pre", cls="sql")}
    assert f"UPDATE t SET c = '{HOSTILE[0]}' WHERE k = '{HOSTILE[0]}'" in sql
    assert doc.by_id("plan-id").text == HOSTILE[0]
    svg_titles = [t.text for n in doc.find_all("svg") for t in n.find_all("title")]
    assert any(HOSTILE[5] in t for t in svg_titles)  # run ids inside SVG <title>
    # The embedded JSON decodes to the exact strings and holds no raw markup.
    raw = re.search(r'<script type="application/json" id="drift-data">(.*?)</script>', html, re.S)
    assert raw is not None and "<" not in raw[1] and "\u2028" not in raw[1]
    data = json.loads(raw[1])
    assert sorted(r[3] for r in data["rows"]) == sorted(keys)
    assert {r[5] for r in data["rows"]} == {*HOSTILE, ""}


def test_safe_json_escapes_markup_and_line_separators():
    text = safe_json({"a": "</script><!--&\u2028\u2029", "b": "🦊"})
    assert str(text) == '{"a":"\\u003c/script\\u003e\\u003c!--\\u0026\\u2028\\u2029","b":"🦊"}'
    assert json.loads(str(text)) == {"a": "</script><!--&\u2028\u2029", "b": "🦊"}


# --------------------------------------------------------------------------- scale


def _many(n: int) -> list[Finding]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        if i % 500 == 0:
            out.append(Finding("stock", (f"K{i}",), "missing_row", expected={"n": 1}))
            continue
        e = int(rng.integers(0, 1000))
        d = int(rng.integers(-50, 50))
        out.append(
            Finding(
                "stock", (f"K{i}",), "mismatch", "n", e, e - d, float(d), "2026-01-01T00:00:00Z"
            )
        )
    return out


def test_top_n_embeds_row_kinds_then_largest_deltas(tmp_path):
    findings = _many(3000)
    folder = make_folder(tmp_path / "big", findings, {"stock": ["n"]})
    render_report(folder, limit=100)
    doc = page(folder)
    notice = doc.by_id("truncated").text
    assert "top 100 of 3,000 findings" in " ".join(notice.split())
    assert {a.attrs["href"] for a in doc.by_id("truncated").find_all("a")} == {
        "findings.parquet",
        "findings.csv",
    }
    bodies = visible_findings(doc)
    assert len(bodies) == 100
    row_level = sum(1 for f in findings if f.kind != "mismatch")
    kinds = [b.find("td", cls="kind").text for b in bodies]
    assert kinds == ["missing_row"] * row_level + ["mismatch"] * (100 - row_level)
    deltas = [abs(float(b.find("td", cls="delta").text)) for b in bodies[row_level:]]
    all_deltas = sorted((abs(f.delta) for f in findings if f.delta is not None), reverse=True)
    assert deltas == all_deltas[: 100 - row_level]
    # The cards still count everything.
    assert doc.by_id("card-findings").find(cls="n").text == "3,000"
    with open(folder / "findings.csv", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == 3001


def test_cli_report_rerenders_and_recreates_the_csv(demo_audit, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(demo_audit, folder)
    (folder / "findings.csv").unlink()
    (folder / "report.html").unlink()
    assert main(["report", str(folder), "--top", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "report.html")
    assert len(visible_findings(page(folder))) == 2
    assert (folder / "findings.csv").read_text().count("\n") == 7  # header + 6 findings
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "audit folder not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- attribution


def test_attribution_columns_render_cause_runs_and_outbox(tmp_path):
    findings = [
        Finding(
            "inventory", ("SKU-3",), "mismatch", "on_hand", 51, 54, -3.0, "2026-03-14T09:09:08Z"
        ),
        Finding(
            "inventory", ("SKU-6",), "mismatch", "on_hand", 59, 71, -12.0, "2026-03-14T09:09:13Z"
        ),
        Finding(
            "inventory", ("SKU-9",), "mismatch", "on_hand", 10, 11, -1.0, "2026-03-14T11:00:00Z"
        ),
    ]
    lost = {
        "overlapping_runs": [[105, 106]],
        "retried_runs": [],
        "first_divergence_at": "2026-03-14T08:00:00Z",
        "runs": [
            {
                "id": 104,
                "job": "receive_stock",
                "worker": "w1",
                "attempt": 1,
                "status": "succeeded",
                "started_at": "2026-03-14T07:00:00Z",
                "finished_at": "2026-03-14T07:00:02Z",
            },
            {
                "id": 105,
                "job": "ship_stock",
                "worker": "w1",
                "attempt": 1,
                "status": "succeeded",
                "started_at": "2026-03-14T08:00:00Z",
                "finished_at": "2026-03-14T08:00:05Z",
            },
            {
                "id": 106,
                "job": "ship_stock",
                "worker": "w2",
                "attempt": 1,
                "status": "succeeded",
                "started_at": "2026-03-14T08:00:01Z",
                "finished_at": "2026-03-14T08:00:04Z",
            },
        ],
        "outbox": [{"id": 7, "event_type": "stock.shipped", "published_at": None}],
        "confidence": "high",
        "why": "two ship_stock runs overlapped; one decrement was lost",
    }
    folder = make_folder(
        tmp_path / "attr",
        findings,
        {"inventory": ["on_hand"]},
        attribution=[("lost_update", lost), ("double_apply", {"why": "retried"}), (None, None)],
    )
    render_report(folder)
    doc = page(folder)
    causes = {
        li.find(cls="badge").text: li.find(cls="count").text
        for li in doc.by_id("by-cause").find_all("li")
    }
    assert causes == {"lost_update": "1", "double_apply": "1", "(none)": "1"}
    bodies = {b.find("td", cls="key").text: b for b in visible_findings(doc)}
    body = bodies['["SKU-3"]']
    assert body.find("td", cls="cause").text.strip() == "lost_update"
    assert body.find("p", cls="why").text == lost["why"]
    runs = body.find("svg", cls="timeline").find_all("rect")
    assert [("overlap" in r.classes) for r in runs] == [False, True, True]
    assert float(runs[0].attrs["x"]) < float(runs[1].attrs["x"]) < float(runs[2].attrs["x"])
    notes = [cells(tr)[-1] for tr in body.find("table", cls="runs").find("tbody").find_all("tr")]
    assert notes == ["", "overlapping", "overlapping"]
    outbox = body.find("table", cls="outbox")
    assert [cells(tr) for tr in outbox.find("tbody").find_all("tr")] == [
        ["7", "stock.shipped", "NULL"]
    ]
    assert bodies['["SKU-9"]'].find("td", cls="cause").text.strip() == ""
    # The time chart uses the first divergence where attribution gives one.
    chart = doc.by_id("chart-time")
    assert "first divergence" in chart.text
    bars = {r.find("title").text for r in chart.find_all("rect")}
    assert any(t.startswith("08:00:") for t in bars), bars


def test_report_without_attribution_omits_its_parts(tmp_path):
    """A spec without job logs: no cause column, card, filter or sort."""
    from drift import demo

    shop = build_demo(tmp_path / "shop")
    assert "[job_logs" not in demo.CORE_SPEC and "[outboxes" not in demo.CORE_SPEC
    shop.spec.write_text(demo.CORE_SPEC)
    result = run_audit(shop.spec, out=tmp_path / "audit")
    doc = page(result.out_dir)
    assert not doc.find_all("td", cls="cause")
    assert not doc.find_all(id="by-cause")
    assert not doc.find_all(cls="attribution")
    assert not doc.find_all("button", data_sort="cause")


# --------------------------------------------------------------------------- plan


def _plan_findings():
    return [
        Finding("inventory", ("SKU-3",), "mismatch", "on_hand", 51, 54, -3.0),
        Finding("inventory", ("SKU-7",), "missing_row", expected={"on_hand": 5}),
    ]


PLAN = {
    "plan_id": "plan-20260314-abc",
    "created_at": "2026-03-14T11:00:00Z",
    "actions": [
        {
            "entity": "inventory",
            "key": '["SKU-3"]',
            "column": "on_hand",
            "kind": "mismatch",
            "mode": "set",
            "before": 54,
            "after": 51,
            "sql": ["UPDATE inventory SET on_hand = 51 WHERE sku = 'SKU-3' AND on_hand = 54"],
        },
        {
            "entity": "inventory",
            "key": '["SKU-7"]',
            "column": None,
            "kind": "missing_row",
            "mode": "insert",
            "before": None,
            "after": {"on_hand": 5},
            "sql": ["INSERT INTO inventory (sku, on_hand) VALUES ('SKU-7', 5)"],
        },
    ],
}


def test_plan_and_approvals_render_in_header_and_rows(tmp_path):
    folder = make_folder(
        tmp_path / "plan",
        _plan_findings(),
        {"inventory": ["on_hand"]},
        plan=PLAN,
        approvals={"approvals": [{"by": "alice", "at": "2026-03-14T12:00:00Z", "note": "ok"}]},
    )
    render_report(folder)
    doc = page(folder)
    assert doc.by_id("plan-id").text == "plan-20260314-abc"
    assert doc.by_id("plan-status").text == "approved"
    assert "alice" in doc.by_id("plan").text
    bodies = {b.find("td", cls="key").text: b for b in visible_findings(doc)}
    assert [p.text for p in bodies['["SKU-3"]'].find_all("pre", cls="sql")] == [
        PLAN["actions"][0]["sql"][0]
    ]
    assert [p.text for p in bodies['["SKU-7"]'].find_all("pre", cls="sql")] == [
        PLAN["actions"][1]["sql"][0]
    ]


def test_plan_without_approvals_is_not_approved_and_a_broken_plan_is_reported(tmp_path):
    folder = make_folder(tmp_path / "p1", _plan_findings(), {"inventory": ["on_hand"]}, plan=PLAN)
    render_report(folder)
    assert page(folder).by_id("plan-status").text == "not approved"
    folder = make_folder(tmp_path / "p2", _plan_findings(), {"inventory": ["on_hand"]})
    (folder / "plan").mkdir()
    (folder / "plan" / "plan.json").write_text("{not json", encoding="utf-8")
    render_report(folder)
    assert "plan/plan.json is unreadable" in page(folder).by_id("plan").text


# --------------------------------------------------------------------------- evidence panel


def test_evidence_budget_and_shared_keys(tmp_path):
    findings = [
        Finding("acct", ("A",), "mismatch", "x", 1, 2, -1.0),
        Finding("acct", ("A",), "mismatch", "y", 1, 5, -4.0),
    ]
    evidence = [evidence_row("acct", '["A"]', p, {"id": 30 - p, "sku": "A"}) for p in range(25)]
    folder = make_folder(tmp_path / "ev", findings, {"acct": ["x", "y"]}, evidence=evidence)
    report = build_report(folder)
    first, second = report.findings
    assert first.column == "y" and first.evidence and second.evidence == ()
    assert second.evidence_at == 0
    (stream,) = first.evidence
    assert stream.collected == 25 and len(stream.rows) == 20
    assert [r[0].text for r in stream.rows[:3]] == ["30", "29", "28"]
    render_report(folder)
    doc = page(folder)
    link = visible_findings(doc)[1].find("a")
    assert link.attrs["href"] == "#f-0"


def test_evidence_cells_of_equal_values_keep_their_own_text(tmp_path):
    """1, True, 1.0 and 1.00 are one dict key, yet each cell shows its own JSON text
    (the report shares the cells of repeated values between keys)."""
    values = [1, True, Decimal("1.0"), Decimal("1.00"), "1", 1.0, False, 0, None, [1], "true"]
    keys = [f"K{i:02}" for i in range(len(values))]
    findings = [Finding("acct", (k,), "mismatch", "x", 1, 2, -1.0) for k in keys]
    evidence = [
        evidence_row("acct", key_to_json([k]), 0, {"id": 1, "v": v}) for k, v in zip(keys, values)
    ]
    folder = make_folder(tmp_path / "eq", findings, {"acct": ["x"]}, evidence=evidence)
    shown = {f.key: f.evidence[0].rows[0][1] for f in build_report(folder).findings}
    assert [shown[key_to_json([k])].text for k in keys] == [
        "1", "true", "1.0", "1.00", "1", "1.0", "false", "0", "NULL", "[1]", "true"
    ]  # fmt: skip
    assert [shown[key_to_json([k])].null for k in keys].count(True) == 1


# --------------------------------------------------------------------------- charts


def test_delta_bins():
    bins = delta_bins(np.array([-3.0, -12.0, 1.0]))
    assert [b.label for b in bins][:2] == ["-12", "-11"] and len(bins) == 14
    assert sum(b.count for b in bins) == 3
    wide = delta_bins(np.array([-3.0, -12000.0, 1.0, 0.0, 5e6]))
    assert sum(b.count for b in wide) == 5
    assert ("0", 1) in [(b.label, b.count) for b in wide]
    linear = delta_bins(np.array([0.5, 1.5, 2.25, 9.75]))
    assert len(linear) == 24 and sum(b.count for b in linear) == 4


def test_time_bins_pick_a_round_width():
    bins, width = time_bins(np.array([0.0, 100.0, 5 * 3600.0]))
    assert width == 900 and bins[0].label == "00:00" and bins[0].count == 2
    assert sum(b.count for b in bins) == 3


def test_report_of_a_clean_audit_and_of_null_keys_only(tmp_path):
    clean = make_folder(tmp_path / "clean", [], {"stock": ["n"]})
    render_report(clean)
    doc = page(clean)
    assert "No drift found" in doc.by_id("header").text
    assert not doc.find_all(id="findings-table") and not doc.find_all(id="charts")
    nulls = make_folder(
        tmp_path / "nulls",
        [Finding("stock", (None,), "null_key", actual={"rows": 3}, extra={"rows": 3})],
        {"stock": ["n"]},
    )
    render_report(nulls)
    doc = page(nulls)
    (body,) = visible_findings(doc)
    assert "NULL key belong to no entity" in body.text
    assert not doc.find_all(id="chart-time")


# --------------------------------------------------------------------------- cells


def test_cells_are_escaped_once_in_python():
    rows = [(Cell("<b>&\"'x"), Cell("NULL", null=True, full_length=4), clip("<" * 400), Cell("?"))]
    assert str(rows_html(rows)) == (
        '<tr><td>&lt;b&gt;&amp;&#34;&#39;x</td><td><span class="null">NULL</span></td>'
        f'<td>{"&lt;" * 300}… <span class="clipped">(400 chars)</span></td><td>?</td></tr>\n'
    )
    assert str(rows_html([])) == ""
    # Already-escaped looking text is text: escaped again, never trusted.
    assert str(cell_html(Cell("&lt;b&gt;"))) == "&amp;lt;b&amp;gt;"
    assert str(cell_html(value_cell(None))) == '<span class="null">NULL</span>'


def test_a_clipped_value_always_says_how_long_it_was():
    for cell in (clip, value_cell):
        assert str(rows_html([(cell("z" * 301),)])) == f"<tr><td>{'z' * 301}</td></tr>\n"
        assert str(rows_html([(cell("z" * 302),)])) == (
            f'<tr><td>{"z" * 300}… <span class="clipped">(302 chars)</span></td></tr>\n'
        )


def test_rows_of_plain_cells_are_their_texts_and_one_other_cell_is_still_escaped():
    """Rows whose cells need no escape, NULL mark or clip note are joined as they are;
    one cell that needs any of them anywhere in the rows takes the cell-by-cell path."""
    plain = [(Cell("1"), Cell("SKU-1"), Cell("?")), (Cell("2"), Cell("é 🦊"), Cell(""))]
    expected = (
        "<tr><td>1</td><td>SKU-1</td><td>?</td></tr>\n<tr><td>2</td><td>é 🦊</td><td></td></tr>\n"
    )
    assert str(rows_html(plain)) == expected
    assert str(rows_html(iter(plain))) == expected
    assert str(rows_html([()])) == "<tr></tr>\n"
    for other, html in [
        (Cell("a&b"), "a&amp;b"),
        (Cell(">"), "&gt;"),
        (Cell("'"), "&#39;"),
        (value_cell(None), '<span class="null">NULL</span>'),
        (clip("y" * 400), "y" * 300 + '… <span class="clipped">(400 chars)</span>'),
    ]:
        rows = [*plain, (Cell("3"), other, Cell("x"))]
        assert str(rows_html(rows)) == expected + f"<tr><td>3</td><td>{html}</td><td>x</td></tr>\n"


def test_the_collector_is_paused_only_while_rendering(tmp_path, monkeypatch):
    import gc

    folder = make_folder(tmp_path / "gc", _plan_findings(), {"inventory": ["on_hand"]})
    seen = []
    real = render_html

    def spy(report):
        seen.append(gc.isenabled())
        return real(report)

    monkeypatch.setattr("audit.report.render_html", spy)
    assert gc.isenabled()
    render_report(folder)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        render_report(folder)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()
    (folder / "findings.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(AuditFolderError):
        render_report(folder)
    assert gc.isenabled()
