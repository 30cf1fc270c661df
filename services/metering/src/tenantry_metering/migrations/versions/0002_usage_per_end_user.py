"""usage ledger: the end user each request named

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_ledger", sa.Column("end_user", sa.String(length=256), nullable=True))
    op.create_index(
        "ix_usage_ledger_end_user",
        "usage_ledger",
        ["tenant_id", "day"],
        postgresql_where=sa.text("end_user IS NOT NULL"),
        postgresql_include=["end_user", "prompt_tokens", "completion_tokens", "cost_micros"],
    )


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_end_user", table_name="usage_ledger")
    op.drop_column("usage_ledger", "end_user")
