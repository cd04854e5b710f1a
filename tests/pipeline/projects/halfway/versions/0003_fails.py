"""adds a column, then a CHECK that row 2 violates: fails half-way

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("note", sa.Text(), nullable=True))
    op.execute("ALTER TABLE items ADD CONSTRAINT items_qty_positive CHECK (qty > 0)")


def downgrade() -> None:
    op.drop_constraint("items_qty_positive", "items", type_="check")
    op.drop_column("items", "note")
