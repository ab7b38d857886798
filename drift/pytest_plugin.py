"""drift's pytest plugin (entry point ``pytest11: drift``).

Fixtures:

* ``drift_scratch_url`` -- an empty scratch database for one test: SQLite in
  ``tmp_path`` by default, or a fresh schema (PostgreSQL) / database (MariaDB)
  on the server given by ``--drift-db URL`` or ``DRIFT_TEST_DATABASE_URL``.

Use it with :func:`drift.testing.run_concurrently` and
:func:`drift.testing.assert_no_drift`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("drift")
    group.addoption(
        "--drift-db",
        default=None,
        help="database server URL for drift_scratch_url (default: SQLite in tmp_path; "
        "also DRIFT_TEST_DATABASE_URL)",
    )


@pytest.fixture
def drift_scratch_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty scratch database URL, dropped after the test."""
    from drift.testing import scratch_database

    base = request.config.getoption("--drift-db") or os.environ.get("DRIFT_TEST_DATABASE_URL")
    with scratch_database(base, tmp_path) as url:
        yield url
