"""branch b continues: column b2

Revision ID: 0003b
Revises: 0002b
"""

import sqlalchemy as sa
from alembic import op

revision = "0003b"
down_revision = '0002b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("things", sa.Column("col_b2", sa.Integer()))


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
