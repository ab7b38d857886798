"""Synthetic audit folders for report tests (no database needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from audit.evidence import EVIDENCE, EVIDENCE_SCHEMA
from audit.findings import Finding, FindingsWriter

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>alert(2)</script>",
    "'; alert(3); '",
    'back\\slash \\u003c \\" quote',
    "emoji 🦊 non-BMP 𝔘𝔫𝔦 \u2028line\u2029sep",
    "<!-- <svg onload=alert(4)> -->",
    "javascript:alert(5)",
]


def summary_for(
    writer: FindingsWriter, entities: dict[str, list[str]], **overrides: Any
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "tool": "drift",
        "version": "0.1.0",
        "created_at": "2026-03-14T10:00:00+00:00",
        "spec": {"path": "drift.toml", "sha256": "ab" * 32},
        "database": {
            "url": "postgresql+psycopg://app:***@db.internal/shop",
            "dialect": "postgresql",
        },
        "snapshot": {"taken_at": "2026-03-14T09:59:59+00:00", "isolation": "REPEATABLE READ"},
        "scope": "full",
        "watermarks": {"stock": {"order_by": ["id"], "value": [88], "rows": 88}},
        "rows_scanned": {"entities": {e: 100 for e in entities}, "streams": {"stock": 88}},
        "entities": {
            e: {
                "table": e,
                "key": ["id"],
                "columns": {c: {"fold": "sum", "stream": "stock"} for c in columns},
            }
            for e, columns in entities.items()
        },
        "counts": writer.counts(),
        "timings": {},
        "command": "drift audit -c drift.toml",
    }
    summary.update(overrides)
    return summary


def make_folder(
    folder: Path,
    findings: list[Finding],
    entities: dict[str, list[str]],
    *,
    attribution: list[tuple[str | None, dict | None]] | None = None,
    evidence: list[dict[str, Any]] | None = None,
    plan: dict[str, Any] | None = None,
    approvals: dict[str, Any] | None = None,
    **summary: Any,
) -> Path:
    """Write an audit folder; ``attribution`` gives (cause, evidence) per finding."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = FindingsWriter(folder / "findings.parquet")
    writer.add_all(findings)
    writer.close()
    if attribution is not None:
        table = pq.read_table(folder / "findings.parquet")
        columns = {
            "cause": pa.array([c for c, _ in attribution], pa.string()),
            "evidence": pa.array(
                [None if e is None else json.dumps(e) for _, e in attribution], pa.string()
            ),
        }
        for name, values in columns.items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values)
            else:
                table = table.append_column(name, values)
        pq.write_table(table, folder / "findings.parquet")
    (folder / "summary.json").write_text(
        json.dumps(summary_for(writer, entities, **summary)), encoding="utf-8"
    )
    if evidence is not None:
        pq.write_table(pa.Table.from_pylist(evidence, schema=EVIDENCE_SCHEMA), folder / EVIDENCE)
    if plan is not None:
        (folder / "plan").mkdir(exist_ok=True)
        (folder / "plan" / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    if approvals is not None:
        (folder / "plan").mkdir(exist_ok=True)
        (folder / "plan" / "approvals.json").write_text(json.dumps(approvals), encoding="utf-8")
    return folder


def evidence_row(entity: str, key: str, position: int, row: dict[str, Any]) -> dict[str, Any]:
    from audit.findings import to_json

    return {
        "entity": entity,
        "key": key,
        "source": "stream:stock",
        "position": position,
        "at": str(row.get("created_at")),
        "row": to_json(row),
        "roles": json.dumps({"key": ["sku"], "order_by": ["id"], "time": "created_at"}),
    }


def hostile_folder(folder: Path) -> Path:
    """Every string the report shows is hostile: keys, values, names, evidence, plan."""
    entity = HOSTILE[1]
    column = HOSTILE[0]
    findings = []
    attribution = []
    evidence = []
    actions = []
    for i, text in enumerate(HOSTILE):
        key = (text, i)
        findings.append(
            Finding(
                entity=entity,
                key=key,
                kind="mismatch",
                column=column,
                expected=text,
                actual=HOSTILE[(i + 1) % len(HOSTILE)],
                last_event_at=f"2026-03-14T09:0{i}:00Z",
            )
        )
        attribution.append(
            (
                text,
                {
                    "overlapping_runs": [[text, i]],
                    "retried_runs": [text],
                    "first_divergence_at": text if i % 2 else "2026-03-14T09:00:00Z",
                    "runs": [
                        {
                            "id": text,
                            "job": text,
                            "worker": text,
                            "attempt": text,
                            "status": text,
                            "started_at": "2026-03-14T09:00:00Z",
                            "finished_at": text,
                        }
                    ],
                    "outbox": [{text: text, "payload": {"x": text}}],
                    "confidence": text,
                    "why": text,
                },
            )
        )
        key_json = findings[-1].key_json
        evidence.append(evidence_row(entity, key_json, 0, {text: text, "sku": text, "qty": i}))
        actions.append(
            {
                "entity": entity,
                "key": key_json,
                "column": column,
                "kind": text,
                "mode": text,
                "before": text,
                "after": text,
                "sql": [f"UPDATE t SET c = '{text}' WHERE k = '{text}'"],
            }
        )
    findings.append(
        Finding(
            entity=entity, key=(HOSTILE[2],), kind="orphan_row", actual={HOSTILE[0]: HOSTILE[1]}
        )
    )
    attribution.append((None, None))
    return make_folder(
        folder,
        findings,
        {entity: [column]},
        attribution=attribution,
        evidence=evidence,
        plan={"plan_id": HOSTILE[0], "created_at": HOSTILE[1], "actions": actions},
        approvals={"approvals": [{"by": HOSTILE[2], "at": HOSTILE[3], "note": HOSTILE[4]}]},
        command=f"drift audit --db 'postgresql://u:hunter2@h/d' -c '{HOSTILE[0]}'",
        database={"url": f"postgresql://u:hunter2@h/{HOSTILE[1]}", "dialect": HOSTILE[0]},
        watermarks={HOSTILE[0]: {"order_by": [HOSTILE[1]], "value": [HOSTILE[2]], "rows": 3}},
    )


def edge_folder(folder: Path) -> Path:
    """Values at the edges of what a cell shows: clipped text, SQL NULL, exact numbers,
    nested and binary values, rows that are not objects, ragged columns, broken roles,
    two streams for one key, and a key whose evidence another finding shows."""
    from decimal import Decimal

    long_text = "x" * 299 + "<é>" + "y" * 50  # clipped at 300, the markup straddles the cut
    findings = [
        Finding("acct", ("A",), "mismatch", "note", long_text, None, None, "2026-03-14T09:00:00Z"),
        Finding(
            "acct",
            ("A",),
            "mismatch",
            "bal",
            Decimal("12345678901234567890.125"),
            Decimal("0.5"),
            1.2345678901234567e19,
            "2026-03-14T09:00:01Z",
        ),
        Finding("acct", ("B", 2), "missing_row", expected={"bal": 1, "note": "<b>"}),
        Finding("acct", ("C",), "orphan_row", actual={"bal": None, "note": "x" * 400}),
        Finding("acct", ("D",), "mismatch", "bal", 1.5, True, 0.5, None),
        Finding("acct", (None,), "null_key", actual={"rows": 2}, extra={"rows": 2}),
    ]
    stream_rows: list[dict[str, Any]] = [
        {"id": 9, "sku": "A", "qty": Decimal("-0.000000000000000001"), "memo": None},
        {"id": 8, "sku": "A", "qty": 10**30, "memo": long_text, "tags": ["<a>", {"b": None}]},
        {"id": 7, "sku": "A", "qty": 2.5, "memo": b"\x00\xffbin", "flag": False},
        {"id": 6, "sku": "A", "qty": float("nan"), "memo": "x" * 300},
    ]
    evidence = [evidence_row("acct", '["A"]', p, r) for p, r in enumerate(stream_rows)]
    evidence.append({**evidence_row("acct", '["A"]', 4, {}), "row": '["not", "an object"]'})
    evidence.append(
        {
            **evidence_row("acct", '["A"]', 0, {"id": 1, "sku": "A", "created_at": None}),
            "source": "stream:orders",
            "roles": "{broken",
        }
    )
    evidence.append(
        {
            **evidence_row("acct", '["B",2]', 0, {"id": 3, "sku": "B"}),
            "roles": json.dumps({"key": ["sku", "id"], "order_by": ["id"], "time": None}),
        }
    )
    lost = {
        "first_divergence_at": "2026-03-14T08:00:00Z",
        "runs": [
            {"id": 1, "job": "j", "started_at": "2026-03-14T08:00:00Z", "finished_at": None},
            {"id": 2, "job": "j", "started_at": "not a time", "finished_at": ""},
        ],
        "outbox": [{"id": 1, "payload": {"n": 1.5, "s": "<i>"}}, {"other": long_text}],
        "why": long_text,
    }
    return make_folder(
        folder,
        findings,
        {"acct": ["note", "bal"]},
        attribution=[("lost_update", lost), ("unknown", None), (None, {"why": 3})]
        + [(None, None)] * 3,
        evidence=evidence,
        plan={
            "plan_id": "p",
            "created_at": "2026-03-14T11:00:00Z",
            "actions": [
                {
                    "entity": "acct",
                    "key": '["A"]',
                    "column": "note",
                    "kind": "mismatch",
                    "mode": "cas",
                    "before": None,
                    "after": long_text,
                    "sql": "UPDATE acct SET note = '…' WHERE id = 'A'",
                },
                {
                    "entity": "acct",
                    "key": '["B",2]',
                    "column": None,
                    "kind": "missing_row",
                    "mode": "insert",
                    "before": None,
                    "after": {"bal": 1, "note": "<b>"},
                    "sql": ["INSERT INTO acct VALUES ('B', 2)", "-- second"],
                },
            ],
        },
    )
