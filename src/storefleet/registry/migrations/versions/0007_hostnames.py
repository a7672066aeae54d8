"""Hostnames: each store's slug (its hostname under the base domain) and its custom domains.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("slug", sa.String(40), nullable=True))
        batch.create_unique_constraint("uq_stores_slug", ["slug"])
    op.create_table(
        "store_domains",
        sa.Column("domain", sa.String(100), primary_key=True),
        sa.Column(
            "store_id",
            sa.String(36),
            sa.ForeignKey("stores.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_store_domains_store_id", "store_domains", ["store_id"])


def downgrade() -> None:
    op.drop_index("ix_store_domains_store_id", "store_domains")
    op.drop_table("store_domains")
    with op.batch_alter_table("stores") as batch:
        batch.drop_constraint("uq_stores_slug", type_="unique")
        batch.drop_column("slug")
