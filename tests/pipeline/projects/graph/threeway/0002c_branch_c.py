"""branch c: column c

Revision ID: 0002c
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002c"
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("things", sa.Column("col_c", sa.Integer()))


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
