"""docs/attribution.md stays true: its spec examples parse, its lists match the code."""

from __future__ import annotations

import re
from pathlib import Path

from audit.attribution import CAUSES
from audit.findings import OUTBOX_KINDS
from audit.presets import PRESETS
from audit.spec import parse_spec

DOC = Path(__file__).parent.parent / "docs" / "attribution.md"


def blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_the_full_example_parses():
    spec = parse_spec(blocks()[0])
    assert set(spec.job_logs) == {"runs"} and set(spec.outboxes) == {"stock"}
    assert spec.streams["stock"].run_id == "job_run_id"


def test_fragments_parse_on_top_of_the_full_example():
    base = blocks()[0]
    for fragment in blocks()[1:]:
        text = base + "\n" + fragment
        if "[entities.inventory.columns.on_hand]" in fragment:
            text = text.replace(
                '[entities.inventory.columns.on_hand]\nstream = "stock"\n'
                'fold = "sum"\nvalue = "qty"\n',
                "",
                1,
            )
        parse_spec(text)


def test_every_cause_kind_and_preset_is_documented():
    text = DOC.read_text()
    for name in (*CAUSES, *OUTBOX_KINDS, "witness_disagreement"):
        assert f"`{name}`" in text, name
    for name, preset in PRESETS.items():
        assert f"### {name if name != 'oban' else 'Oban'}".lower() in text.lower(), name
        assert preset.blind_spots
