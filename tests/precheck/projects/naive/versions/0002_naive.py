"""what autogenerate writes: constraints that scan under strong locks, a plain CREATE INDEX"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_check_constraint("ck_orders_amount", "orders", "amount > 0")
    op.create_check_constraint("ck_items_quantity", "items", "quantity > 0")
    op.create_foreign_key("fk_items_order", "items", "orders", ["order_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_orders_status", "orders", ["status"])
