"""items, with one row of quantity 0

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("items", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("qty", sa.Integer()))
    op.execute("INSERT INTO items (id, qty) VALUES (1, 5), (2, 0)")


def downgrade() -> None:
    op.drop_table("items")
