"""cloudha_host: the host table of a fleet run without an orchestrator (cloudha run)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "cloudha_host",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("hypervisor", sa.String(32), nullable=False),
        sa.Column("resource_state", sa.String(64), nullable=False),
        sa.Column("cluster", sa.String(255), nullable=True),
        sa.Column("pod", sa.String(255), nullable=False),
        sa.Column("zone", sa.String(255), nullable=False),
        sa.Column("private_ip", sa.String(255), nullable=True),
        sa.Column("watchdog", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("rack", sa.String(255), nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("update_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_ping", sa.Double(), server_default="0", nullable=False),
        sa.Column("management_server_id", sa.String(255), nullable=True),
        sa.Column("disconnected_on", sa.Double(), nullable=True),
        sa.Column("removed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("fence_ready", sa.Boolean(), nullable=True),
        sa.Column("fence_detail", sa.Text(), nullable=True),
        sa.Column("fence_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cloudha_host"),
    )
    op.create_index(
        "ix_cloudha_host_management_server_id", "cloudha_host", ["management_server_id"]
    )
    op.create_index("ix_cloudha_host_cluster", "cloudha_host", ["cluster"])


def downgrade() -> None:
    op.drop_index("ix_cloudha_host_cluster", table_name="cloudha_host")
    op.drop_index("ix_cloudha_host_management_server_id", table_name="cloudha_host")
    op.drop_table("cloudha_host")
