"""the safe pattern, part 1: NOT VALID constraints (catalog only), each in its own transaction so that the
revision never holds one table's strong lock while waiting for another's (no deadlock with the application)"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_check_constraint("ck_orders_amount", "orders", "amount > 0", postgresql_not_valid=True)
        op.create_check_constraint("ck_items_quantity", "items", "quantity > 0", postgresql_not_valid=True)
        op.create_foreign_key("fk_items_order", "items", "orders", ["order_id"], ["id"], ondelete="CASCADE",
                              postgresql_not_valid=True)
