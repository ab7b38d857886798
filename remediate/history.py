"""The remediation history, kept in the target database itself.

* ``drift_remediation_log``: one row per (plan, operation) -- operation is
  ``fix`` or ``rollback``. Its primary key is the shared "already applied"
  check: ``drift apply`` and the standalone scripts both insert this row in the
  same transaction as their changes, so a second run fails without changing
  anything.
* ``drift_remediation_batches``: one row per committed batch of a batched
  apply; a resumed apply skips the batches found here.
* ``drift_remediation_rows``: per changed row, the value before and after (exact
  JSON text), written by ``drift apply`` in the transaction that changed it.

The tables are created when missing (``CREATE TABLE IF NOT EXISTS``), before
any transaction that changes data (DDL commits implicitly on MariaDB). A dry
run creates nothing that outlives it: the tables it finds missing it creates
``TEMPORARY`` (its own session's, gone when it disconnects; no implicit commit
on MariaDB), under the same names, which every engine resolves to the
temporary table first.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

LOG = "drift_remediation_log"
BATCHES = "drift_remediation_batches"
ROWS = "drift_remediation_rows"

FIX = "fix"
ROLLBACK = "rollback"

IN_PROGRESS = "in_progress"
APPLIED = "applied"


def history_tables(
    metadata: sa.MetaData, temporary: bool = False
) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The three history tables, defined on ``metadata`` (``TEMPORARY`` ones if asked)."""
    prefixes = ["TEMPORARY"] if temporary else []
    log = sa.Table(
        LOG,
        metadata,
        sa.Column("plan_id", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(16), primary_key=True),
        sa.Column("plan_sha256", sa.String(64)),
        sa.Column("via", sa.String(32), nullable=False),
        sa.Column("approvers", sa.Text),
        sa.Column("applied_by", sa.String(255)),
        sa.Column("target_override", sa.Text),
        sa.Column("started_at", sa.String(40)),
        sa.Column("finished_at", sa.String(40)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("rows_changed", sa.Integer),
        sa.Column("batch_size", sa.Integer),
        prefixes=prefixes,
    )
    batches = sa.Table(
        BATCHES,
        metadata,
        sa.Column("plan_id", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(16), primary_key=True),
        sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("rows_changed", sa.Integer, nullable=False),
        sa.Column("committed_at", sa.String(40)),
        prefixes=prefixes,
    )
    rows = sa.Table(
        ROWS,
        metadata,
        sa.Column("plan_id", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(16), primary_key=True),
        sa.Column("action_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("batch_no", sa.Integer),
        sa.Column("entity", sa.String(255), nullable=False),
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("column_name", sa.String(255)),
        sa.Column("before_value", sa.Text),
        sa.Column("after_value", sa.Text),
        prefixes=prefixes,
    )
    return log, batches, rows


class History:
    """The history tables of one target, bound to a MetaData."""

    def __init__(self) -> None:
        self.metadata = sa.MetaData()
        self.log, self.batches, self.rows = history_tables(self.metadata)

    def ensure(self, conn: Connection) -> None:
        """Create the tables when missing (commits: call outside the apply transaction)."""
        with conn.begin():
            for table in (self.log, self.batches, self.rows):
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))

    def ensure_for_dry_run(self, conn: Connection) -> None:
        """Use the tables that exist; create the missing ones TEMPORARY (this session only)."""
        temporary = history_tables(sa.MetaData(), temporary=True)
        with conn.begin():
            inspector = sa.inspect(conn)
            kept = []
            for table, temp in zip((self.log, self.batches, self.rows), temporary, strict=True):
                if inspector.has_table(table.name):
                    kept.append(table)
                else:
                    conn.execute(sa.schema.CreateTable(temp))
                    kept.append(temp)
        self.log, self.batches, self.rows = kept

    def entry(self, conn: Connection, plan_id: str, operation: str) -> dict | None:
        row = conn.execute(
            sa.select(self.log).where(
                self.log.c.plan_id == plan_id, self.log.c.operation == operation
            )
        ).first()
        return None if row is None else dict(row._mapping)

    def done_batches(self, conn: Connection, plan_id: str, operation: str) -> set[int]:
        return set(
            conn.execute(
                sa.select(self.batches.c.batch_no).where(
                    self.batches.c.plan_id == plan_id, self.batches.c.operation == operation
                )
            ).scalars()
        )
