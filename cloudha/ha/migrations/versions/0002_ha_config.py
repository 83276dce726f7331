"""ha_config: Host-HA's per-resource state (spec §7.4)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ha_config",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("resource_id", sa.String(255), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("ha_state", sa.String(32), nullable=True),
        sa.Column("provider", sa.String(255), nullable=True),
        sa.Column("update_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mgmt_server_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ha_config"),
        sa.UniqueConstraint(
            "resource_id", "resource_type", name="uq_ha_config_resource_id_resource_type"
        ),
    )


def downgrade() -> None:
    op.drop_table("ha_config")
