"""a table with a CHECK constraint (something for the precheck to derive and count)

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("probe_items", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("qty", sa.Integer()))
    op.create_check_constraint("ck_probe_items_qty", "probe_items", "qty >= 0")


def downgrade() -> None:
    op.drop_table("probe_items")
