"""base tables"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("orders", sa.Column("id", sa.BigInteger, primary_key=True),
                    sa.Column("amount", sa.Numeric(12, 2)), sa.Column("status", sa.Text))
    op.create_table("items", sa.Column("id", sa.BigInteger, primary_key=True), sa.Column("order_id", sa.BigInteger),
                    sa.Column("quantity", sa.BigInteger))
