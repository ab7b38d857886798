"""docs/incremental.md, docs/benchmarks.md and remediation's benchmark stay true to the code."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import typer

from audit.incremental import DEFAULT_LOOKBACK, STATE_FILE, STATE_VERSION
from drift.cli import app

ROOT = Path(__file__).resolve().parents[1]
INCREMENTAL = (ROOT / "docs" / "incremental.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_incremental_option_is_documented_with_its_default():
    audit = typer.main.get_command(app).commands["audit"]  # type: ignore[attr-defined]
    options = {
        p.opts[0]: p for p in audit.params if p.opts[0] in ("--since-last", "--state", "--lookback")
    }
    assert set(options) == {"--since-last", "--state", "--lookback"}
    for name in options:
        assert f"`{name}" in INCREMENTAL, f"{name} is not in docs/incremental.md"
    assert options["--lookback"].default == DEFAULT_LOOKBACK.total_seconds()
    assert f"default {int(DEFAULT_LOOKBACK.total_seconds())})" in INCREMENTAL
    assert f"`{STATE_FILE}`" in INCREMENTAL


def test_the_state_file_example_has_the_written_shape():
    (block,) = re.findall(r"```json\n(.*?)```", INCREMENTAL, flags=re.S)
    example = json.loads(block)
    assert example["version"] == STATE_VERSION
    (entry,) = example["audits"].values()
    for mark in entry["marks"]:
        assert set(mark) == {"taken_at", "streams"}
        dt.datetime.fromisoformat(mark["taken_at"])


def test_every_figure_says_which_command_made_it():
    sections = re.findall(r"<!-- bench:(\w+):(\w) -->\n(.*?)<!-- /bench", BENCHMARKS, re.S)
    assert sections
    for engine, scale, body in sections:
        assert f"`python -m benchmarks.run --engine {engine} --scale {scale}" in body
        assert "Machine:" in body


def test_the_tuned_lower_bound_uses_the_audit_settings():
    from audit.dialects import PostgresDialect
    from benchmarks.contenders import PG_AUDIT_SETTINGS

    before, _ = PostgresDialect().whole_table_settings()
    audit = ["SET jit = off", *(s.replace("SET LOCAL", "SET") for s in before)]
    assert list(PG_AUDIT_SETTINGS) == audit
    assert "SET LOCAL jit = off" in Path(ROOT / "audit" / "dialects.py").read_text()


def test_the_tuned_mariadb_lower_bound_uses_the_audit_setting():
    from audit.dialects import MySQLDialect
    from benchmarks.contenders import MYSQL_AUDIT_SETTINGS

    before, _ = MySQLDialect().whole_table_settings()
    assert [s for s in before if not s.startswith("SET @")] == list(MYSQL_AUDIT_SETTINGS)


def test_the_remediation_benchmark_figures_are_what_the_benchmark_prints():
    section = (ROOT / "docs" / "remediation.md").read_text().split("## Benchmark", 1)[1]
    command, output = re.findall(r"```(?:sh)?\n(.*?)```", section, flags=re.S)[:2]
    script = command.split()[1]
    source = (ROOT / script).read_text()
    assert script == "benchmarks/apply_100k.py" and '"--url"' in source
    labels = [line.split(":", 1)[0].strip() for line in output.splitlines()]
    assert len(labels) >= 7
    for label in labels:
        assert f"{label}:" in source, f"the benchmark prints no {label!r}"
