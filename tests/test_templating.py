"""Compiled templates are cached between runs; the cache never changes a rendering, and a
damaged, unwritable or disabled cache only costs the compile."""

from __future__ import annotations

import os
import re

import pytest

from audit import run_audit
from audit.report import render_report
from audit.templating import html_environment, sql_environment
from drift.demo import build_demo


def normalized(script: bytes) -> bytes:
    """A fix.sql without what differs between two plans of one audit: its id and time."""
    script = re.sub(rb"plan-\d{8}T\d{6}Z-[0-9a-f]{8}", b"PLAN", script)
    return re.sub(rb"-- created: .*", b"", script)


@pytest.fixture
def fresh_environments(monkeypatch):
    def use(cache: str) -> None:
        monkeypatch.setenv("DRIFT_TEMPLATE_CACHE", cache)
        html_environment.cache_clear()
        sql_environment.cache_clear()

    yield use
    html_environment.cache_clear()
    sql_environment.cache_clear()


def test_the_cache_never_changes_a_report(tmp_path, fresh_environments):
    shop = build_demo(tmp_path / "shop")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    fresh_environments("off")
    folder = run_audit(shop.spec, out=tmp_path / "audit").out_dir
    uncached = (folder / "report.html").read_bytes()
    fix = (folder / "plan" / "fix.sql").read_bytes()

    fresh_environments(str(cache))
    assert render_report(folder).read_bytes() == uncached  # compiled, then written to the cache
    written = sorted(p.name for p in cache.iterdir())
    assert written and all(n.startswith("drift-html-") for n in written)
    fresh_environments(str(cache))
    assert render_report(folder).read_bytes() == uncached  # from the cache

    # Damaged cache files: compiled again, same bytes.
    for path in cache.iterdir():
        path.write_bytes(os.urandom(64))
    fresh_environments(str(cache))
    assert render_report(folder).read_bytes() == uncached

    # A cache "folder" that is a file (no file can be read from or written into it, even
    # as root): compiled every time, same bytes.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    fresh_environments(str(blocked))
    assert render_report(folder).read_bytes() == uncached
    assert blocked.read_text() == ""

    # The SQL layouts have their own cache files (they compile with other settings).
    fresh_environments(str(cache))
    again = run_audit(shop.spec, out=tmp_path / "second" / "audit").out_dir
    assert normalized((again / "plan" / "fix.sql").read_bytes()) == normalized(fix)
    assert any(p.name.startswith("drift-sql-") for p in cache.iterdir())
