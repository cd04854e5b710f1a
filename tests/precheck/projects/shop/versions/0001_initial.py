"""initial tables, no constraints"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("products", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(100)),
                    sa.Column("stock", sa.Integer), sa.Column("reserved_stock", sa.Integer))
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), sa.Column("product_id", sa.Integer),
                    sa.Column("quantity", sa.Integer), sa.Column("note", sa.String(200)))
