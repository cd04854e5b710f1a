"""the safe pattern, part 2: VALIDATE in a later transaction, CREATE INDEX CONCURRENTLY"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_orders_amount")
    op.execute("ALTER TABLE items VALIDATE CONSTRAINT ck_items_quantity")
    op.execute("ALTER TABLE items VALIDATE CONSTRAINT fk_items_order")
    with op.get_context().autocommit_block():
        op.create_index("ix_orders_status", "orders", ["status"], postgresql_concurrently=True, if_not_exists=True)
