"""branch a: column a

Revision ID: 0002a
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002a"
down_revision = '0001'
branch_labels = ('left',)
depends_on = None


def upgrade() -> None:
    op.add_column("things", sa.Column("col_a", sa.Integer()))


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
