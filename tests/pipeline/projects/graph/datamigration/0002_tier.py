"""a data migration: accounts.tier, set to 'gold' where the balance is over 100 (3 rows), then NOT NULL

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("tier", sa.Text(), nullable=True))
    op.execute("UPDATE accounts SET tier = 'gold' WHERE balance > 100")
    op.execute("UPDATE accounts SET tier = 'basic' WHERE tier IS NULL")
    op.alter_column("accounts", "tier", nullable=False)


def downgrade() -> None:
    op.drop_column("accounts", "tier")
