"""accounts, with 5 rows (balances 50, 100, 150, 200, 250)

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("accounts", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("balance", sa.Integer()))
    op.execute("INSERT INTO accounts (id, balance) SELECT g, g * 50 FROM generate_series(1, 5) g")


def downgrade() -> None:
    op.drop_table("accounts")
