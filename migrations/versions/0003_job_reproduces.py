"""jobs that reproduce an earlier job

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``jobs.reproduces_job_id``: the earlier job (same tenant) whose spec and inputs this job
re-runs; the worker compares the two results (``pxp.reproduce.compare``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reproduces_job_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reproduces_job_id")
