"""tags with codes in mixed case

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.Text))


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
