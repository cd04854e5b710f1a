"""Base schema of the wholesale marketplace (before production_safety_constraints).

Money is numeric(12,2); nullable columns are nullable on purpose (a NULL passes a CHECK constraint).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(12, 2)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=None if nullable else sa.func.now())


def upgrade() -> None:
    op.create_table(
        "retailers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "wholesalers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "credit_accounts",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("retailer_id", sa.Text(), sa.ForeignKey("retailers.id", ondelete="CASCADE"), nullable=False,
                  unique=True),
        sa.Column("credit_limit", MONEY, nullable=True),
        sa.Column("used_credit", MONEY, nullable=True, server_default="0"),
        _ts("updated_at"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("retailer_id", sa.Text(), sa.ForeignKey("retailers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("wholesaler_id", sa.Text(), sa.ForeignKey("wholesalers.id"), nullable=True),
        sa.Column("final_wholesaler_id", sa.Text(), sa.ForeignKey("wholesalers.id"), nullable=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="PENDING_BIDS"),
        sa.Column("total_amount", MONEY, nullable=True),
        _ts("created_at"),
        _ts("deleted_at", nullable=True),
    )
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("retailer_id", sa.Text(), sa.ForeignKey("retailers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=True),  # no foreign key yet: added by 0002 (ON DELETE SET NULL)
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="PENDING"),
        _ts("created_at"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("retailer_id", sa.Text(), sa.ForeignKey("retailers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("amount", MONEY, nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        _ts("created_at"),
    )
    # the original relation: no ON DELETE action (0002 makes it CASCADE)
    op.create_foreign_key("ledger_entries_order_id_fkey", "ledger_entries", "orders", ["order_id"], ["id"])
    op.create_table(
        "retailer_payments",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("retailer_id", sa.Text(), sa.ForeignKey("retailers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        _ts("paid_at"),
    )
    op.create_table(
        "wholesaler_products",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("wholesaler_id", sa.Text(), sa.ForeignKey("wholesalers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("price", MONEY, nullable=False),
        sa.Column("stock", sa.Integer(), nullable=True, server_default="0"),
        sa.Column("reserved_stock", sa.Integer(), nullable=True, server_default="0"),
    )
    op.create_table(
        "stock_reservations",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("order_id", sa.Text(), sa.ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("product_id", sa.Text(), sa.ForeignKey("wholesaler_products.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=True),
        _ts("created_at"),
    )


def downgrade() -> None:
    for table in ("stock_reservations", "wholesaler_products", "retailer_payments", "ledger_entries",
                  "credit_transactions", "orders", "credit_accounts", "wholesalers", "retailers"):
        op.drop_table(table)
