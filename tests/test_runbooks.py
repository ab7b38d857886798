"""Runbooks that cannot drift from the tool.

Each runbook in ``runbooks/`` runs end to end here, the way an on-call
engineer would follow it on the demo: its runnable blocks (```sh runnable)
run in order in one ``bash -euo pipefail`` session in a fresh folder, its
``toml file=PATH`` blocks are written to PATH at their place in that order,
and every ``# expect: TEXT`` line of a block must appear in what the block
printed. Every ``drift`` command line in any runbook (runnable or not) must
use real commands and options, and every TOML block must parse (a complete
spec with ``audit.parse_spec``). The conventions are in runbooks/README.md.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from audit import parse_spec
from drift.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ROOT / "runbooks"
BOOKS = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
EXPECTED_BOOKS = {
    "incident-response.md",
    "dry-run-diff.md",
    "apply-approved-remediation.md",
    "writing-a-spec.md",
}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SHELLS = {"sh", "bash", "shell", "console"}
RUNNABLE = "runnable"
EXPECT = re.compile(r"^\s*# expect: (?P<text>.+?)\s*$")
EOF_MARK = "__DRIFT_RUNBOOK_EOF__"


@dataclass(frozen=True)
class Block:
    """One fenced block of a runbook."""

    book: str
    line: int  # 1-based line of the opening fence
    lang: str
    attrs: tuple[str, ...]
    text: str

    @property
    def runnable(self) -> bool:
        return self.lang in SHELLS and RUNNABLE in self.attrs

    @property
    def file(self) -> str | None:
        for attr in self.attrs:
            if attr.startswith("file="):
                return attr.removeprefix("file=")
        return None

    @property
    def expects(self) -> list[str]:
        return [m["text"] for line in self.text.splitlines() if (m := EXPECT.match(line))]

    def where(self) -> str:
        return f"runbooks/{self.book}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].split()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed fence"
        i += 1
        lang = info[0] if info else ""
        found.append(Block(path.name, start + 1, lang, tuple(info[1:]), "\n".join(body) + "\n"))
    return found


@dataclass
class Session:
    """The bash script that runs one runbook's steps in order, and its results."""

    steps: list[Block] = field(default_factory=list)

    def script(self, state: Path) -> str:
        out = ["set -euo pipefail", "exec 3>&1 4>&2"]
        for n, block in enumerate(self.steps):
            out.append(f"echo {n} > {shlex.quote(str(state / 'current'))}")
            if block.file:
                assert EOF_MARK not in block.text
                target = shlex.quote(block.file)
                out.append(f'mkdir -p "$(dirname {target})"')
                out.append(f"cat > {target} <<'{EOF_MARK}'\n{block.text}{EOF_MARK}")
                continue
            log = shlex.quote(str(state / f"block-{n}.log"))
            out.append(f"exec >{log} 2>&1")
            out.append(block.text)
            out.append("exec 1>&3 2>&4")
        out.append(f"echo done > {shlex.quote(str(state / 'current'))}")
        return "\n".join(out) + "\n"


def runbook_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_runbooks_exist_and_each_has_runnable_steps():
    assert {p.name for p in BOOKS} == EXPECTED_BOOKS
    assert (RUNBOOKS / "README.md").is_file()
    for book in BOOKS:
        assert any(b.runnable for b in blocks(book)), f"{book.name} has no runnable block"


def test_every_block_is_marked_with_a_known_convention():
    """A typo in a marker (```sh runable) would silently stop a block from running."""
    for book in [*BOOKS, RUNBOOKS / "README.md"]:
        for b in blocks(book):
            for attr in b.attrs:
                ok = (attr == RUNNABLE and b.lang in SHELLS) or (
                    attr.startswith("file=") and b.lang == "toml"
                )
                assert ok, f"{b.where()}: unknown block attribute {attr!r} on {b.lang!r}"
            if b.expects and b.lang != "markdown":  # the README shows the convention itself
                assert b.runnable, f"{b.where()}: '# expect:' in a block that does not run"


@pytest.mark.parametrize("book", BOOKS, ids=[b.stem for b in BOOKS])
def test_runbook_runs_end_to_end_on_the_demo(book: Path, tmp_path: Path):
    steps = [b for b in blocks(book) if b.runnable or b.file]
    session = Session(steps)
    state = tmp_path / ".runbook"
    state.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    script = state / "session.sh"
    script.write_text(session.script(state))
    proc = subprocess.run(
        ["bash", str(script)],
        cwd=work,
        env=runbook_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    current = (state / "current").read_text().strip()
    if proc.returncode != 0 or current != "done":
        n = int(current)
        log = state / f"block-{n}.log"
        printed = log.read_text() if log.exists() else proc.stderr
        pytest.fail(
            f"{steps[n].where()}: the block exited {proc.returncode}\n"
            f"--- block\n{steps[n].text}--- it printed\n{printed}"
        )
    for n, block in enumerate(steps):
        if block.file:
            continue
        printed = (state / f"block-{n}.log").read_text()
        for text in block.expects:
            assert text in printed, (
                f"{block.where()}: expected {text!r} in the output\n"
                f"--- block\n{block.text}--- it printed\n{printed}"
            )


def test_runbooks_tell_the_reader_what_to_look_for():
    """Most runnable steps say what their output shows (checked above)."""
    for book in BOOKS:
        runnable = [b for b in blocks(book) if b.runnable]
        with_expect = [b for b in runnable if b.expects]
        assert len(with_expect) * 2 >= len(runnable), f"{book.name}: too few '# expect:' lines"


# --------------------------------------------------------------- real commands


def _logical_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


SHELL_STOP = {"||", "&&", "|", ";", "&", ">", ">>", "2>", "2>&1", ")", "<"}


def drift_invocations(text: str) -> list[list[str]]:
    """The argument lists of every ``drift`` command in shell text."""
    found = []
    for line in _logical_lines(text):
        if "(when available)" in line:  # announced options, not yet in the CLI
            continue
        try:
            tokens = shlex.split(line, comments=True, posix=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token != "drift" and not token.endswith("/bin/drift"):
                continue
            previous = tokens[i - 1] if i else ""
            starts = (
                i == 0
                or previous in SHELL_STOP
                or previous in {"then", "do", "if", "!", "(", "$(", "timeout", "flock"}
                or "=" in previous
                or previous.endswith(".lock")
            )
            if not starts:
                continue
            args = []
            for t in tokens[i + 1 :]:
                if t in SHELL_STOP or t.startswith((">", "2>", "|", ";", ")")):
                    break
                args.append(t)
            found.append(args)
    return found


def _check_invocation(args: list[str], where: str) -> None:
    group = typer.main.get_command(app)  # typer's own click: duck-typed below
    globals_ = {"--debug", "-q", "--quiet", "--version", "--help"}
    given = bool(args)
    while args and args[0] in globals_:
        args = args[1:]
    assert args or given, f"{where}: `drift` without a command"
    if not args:  # only global options, e.g. "`drift -q` silences progress"
        return
    name = args[0]
    command = group.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"{where}: `drift {name}` is not a drift command"
    options: dict[str, bool] = {}
    for param in command.params:
        if param.param_type_name == "option":
            for opt in [*param.opts, *param.secondary_opts]:
                options[opt] = param.is_flag
    options["--help"] = True
    skip = False
    for token in args[1:]:
        if skip:
            skip = False
            continue
        if not token.startswith("-") or token == "-":
            continue
        opt, eq, _ = token.partition("=")
        assert opt in options, f"{where}: `drift {name}` has no option {opt}"
        skip = not options[opt] and not eq


def test_every_drift_command_in_the_runbooks_is_real():
    checked = 0
    for book in [*BOOKS, RUNBOOKS / "README.md"]:
        text = book.read_text()
        for b in blocks(book):
            if b.lang in SHELLS or b.lang in {"", "cron", "text"}:
                for args in drift_invocations(b.text):
                    _check_invocation(args, b.where())
                    checked += 1
        for span in re.findall(r"(?<!`)`(drift [^`\n]+)`(?!`)", text):
            for args in drift_invocations(span):
                _check_invocation(args, f"runbooks/{book.name}: `{span}`")
                checked += 1
    assert checked > 80


def test_the_command_checker_catches_a_wrong_option():
    with pytest.raises(AssertionError, match="no option --batchsize"):
        _check_invocation(["apply", "P", "--db", "x", "--batchsize", "5"], "t")
    with pytest.raises(AssertionError, match="not a drift command"):
        _check_invocation(["fix", "P"], "t")
    assert drift_invocations("X=1 drift -q audit -c a --out b || test $? -eq 1") == [
        ["-q", "audit", "-c", "a", "--out", "b"]
    ]


# ------------------------------------------------------------------ TOML specs


def test_every_toml_block_parses_and_complete_specs_are_valid():
    parsed = 0
    for book in BOOKS:
        for b in blocks(book):
            if b.lang != "toml":
                continue
            try:
                data = tomllib.loads(b.text)
            except tomllib.TOMLDecodeError as exc:
                pytest.fail(f"{b.where()}: invalid TOML: {exc}")
            if "version" in data:
                parse_spec(b.text)
                parsed += 1
    assert parsed >= 8


def test_the_spec_guide_runs_its_examples_against_tables_it_builds():
    """Every spec example in writing-a-spec.md is saved as a file and audited by a later step."""
    guide = [b for b in blocks(RUNBOOKS / "writing-a-spec.md")]
    specs = [b for b in guide if b.lang == "toml" and "version" in tomllib.loads(b.text)]
    run_text = "\n".join(b.text for b in guide if b.runnable)
    not_run = [
        b.where()
        for b in specs
        if not b.file or not re.search(rf"-c {re.escape(b.file)}\b", run_text)
    ]
    # The procrastinate and Oban presets need those libraries' PostgreSQL schemas.
    assert len(not_run) <= 2, f"spec examples never audited: {not_run}"
