"""The warm pool: a member is a `stores` row made ahead of any signup (`pool` set), whose id
becomes the id of the store that claims it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("pool", sa.String(20), nullable=True))
    op.create_index("ix_stores_pool", "stores", ["pool", "plan"])


def downgrade() -> None:
    op.drop_index("ix_stores_pool", "stores")
    with op.batch_alter_table("stores") as batch:
        batch.drop_column("pool")
