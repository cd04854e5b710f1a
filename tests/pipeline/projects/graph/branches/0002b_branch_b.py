"""branch b: column b

Revision ID: 0002b
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002b"
down_revision = '0001'
branch_labels = ('right',)
depends_on = None


def upgrade() -> None:
    op.add_column("things", sa.Column("col_b", sa.Integer()))


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
