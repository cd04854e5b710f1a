"""ORM data migration, then constraints"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # data migration through the application's ORM (env.py put the application on sys.path)
    from shopapp.models import Order

    session = Session(bind=op.get_bind())
    for order in session.query(Order).filter(Order.note.is_(None)):
        order.note = "n/a"
    session.flush()
    op.alter_column("orders", "note", existing_type=sa.String(200), nullable=False)
    op.create_check_constraint("ck_products_stock", "products", "stock >= 0")
    op.create_unique_constraint("uq_products_name", "products", ["name"])
    op.create_foreign_key("fk_orders_product", "orders", "products", ["product_id"], ["id"])
    # a new column and its constraint: no existing row can violate it
    op.add_column("products", sa.Column("version", sa.Integer, nullable=True))
    op.create_check_constraint("ck_products_version", "products", "version >= 0")
    # a new table with constraints: skipped
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("what", sa.String(50), nullable=False), sa.CheckConstraint("id > 0", name="ck_audit_id"))
    op.create_index("ix_orders_product", "orders", ["product_id"])
