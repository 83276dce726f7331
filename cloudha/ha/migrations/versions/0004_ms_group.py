"""Several management servers: the server registry and the host ownership epoch

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "cloudha_management_server",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("address", sa.String(255), server_default="", nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("beat", sa.Integer(), server_default="0", nullable=False),
        sa.Column("heartbeat_at", sa.Double(), server_default="0", nullable=False),
        sa.Column("registered_at", sa.Double(), server_default="0", nullable=False),
        sa.Column("departed_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cloudha_management_server"),
    )
    with op.batch_alter_table("cloudha_host") as batch:
        batch.add_column(sa.Column("owner_epoch", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("cloudha_host") as batch:
        batch.drop_column("owner_epoch")
    op.drop_table("cloudha_management_server")
