"""op_ha_work and op_ha_generation

Revision ID: 0001
Revises:
Create Date: 2026-05-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "op_ha_work",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("mgmt_server_id", sa.String(255), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("host_id", sa.String(255), nullable=True),
        sa.Column("taken", sa.DateTime(timezone=True), nullable=True),
        sa.Column("time_to_try", sa.Double(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("updated", sa.Integer(), server_default="0", nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("vm_type", sa.String(32), nullable=False),
        sa.Column("tried", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("generation", sa.Integer(), server_default="0", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_op_ha_work"),
    )
    op.create_index(
        "ix_op_ha_work_step_mgmt_server_id_taken_time_to_try",
        "op_ha_work",
        ["step", "mgmt_server_id", "taken", "time_to_try"],
    )
    op.create_index("ix_op_ha_work_instance_id", "op_ha_work", ["instance_id"])
    op.create_index("ix_op_ha_work_host_id", "op_ha_work", ["host_id"])
    op.create_table(
        "op_ha_generation",
        sa.Column("instance_id", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name="pk_op_ha_generation"),
    )


def downgrade() -> None:
    op.drop_table("op_ha_generation")
    op.drop_index("ix_op_ha_work_host_id", table_name="op_ha_work")
    op.drop_index("ix_op_ha_work_instance_id", table_name="op_ha_work")
    op.drop_index("ix_op_ha_work_step_mgmt_server_id_taken_time_to_try", table_name="op_ha_work")
    op.drop_table("op_ha_work")
