"""customers with a full name

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("customers", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("full_name", sa.Text(), nullable=False))


def downgrade() -> None:
    op.drop_table("customers")
