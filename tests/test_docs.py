"""Docs that cannot drift: commands are documented, examples parse and run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from audit import parse_spec, run_audit
from drift.cli import app
from drift.demo import build_demo

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def marked_command(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n```sh\n(.*?)\n```\n<!-- /{name} -->", README, re.S)
    assert match, f"README has no {name} block"
    return match.group(1)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    assert "drift demo" in marked_command("demo-command")
    test_command = marked_command("test-command")
    assert "pytest" in test_command and "[dev]" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "DRIFT_REQUIRE_SERVERS=1" in ci


def test_every_command_has_help_and_a_readme_entry():
    command = typer.main.get_command(app)
    names = sorted(command.commands)  # type: ignore[attr-defined]
    assert {"audit", "demo", "report"} <= set(names)
    for name in names:
        assert command.commands[name].help, f"drift {name} has no help"  # type: ignore[attr-defined]
        assert f"`drift {name}" in README or f"drift {name}" in README, f"drift {name} undocumented"


@pytest.mark.parametrize("doc", ["README.md", "docs/spec.md"])
def test_toml_examples_parse(doc):
    blocks = toml_blocks((ROOT / doc).read_text())
    assert blocks
    for block in blocks:
        spec = parse_spec(block)
        assert spec.entities


def test_the_reference_example_audits_the_demo_shop(tmp_path):
    shop = build_demo(tmp_path / "shop")
    (example,) = toml_blocks((ROOT / "docs" / "spec.md").read_text())
    spec_path = shop.folder / "example.toml"
    spec_path.write_text(example)
    result = run_audit(spec_path, out=tmp_path / "audit", write_report=False)
    assert result.summary["counts"]["by_kind"] == {"mismatch": 3, "missing_row": 1, "orphan_row": 1}


def test_testing_doc_embeds_the_example_that_the_suite_runs():
    doc = (ROOT / "docs" / "testing.md").read_text()
    example = (ROOT / "docs" / "examples" / "concurrency" / "test_ship_stock.py").read_text()
    assert f"```python\n{example.rstrip()}\n```" in doc
