"""NAIVE variant of the wholesale revision 0002, kept for ``bench/stall.py`` only: do not copy it.

Every ALTER TABLE runs in ONE transaction, so the revision holds strong locks on many tables at once and
deadlocks with application transactions (``migrations/wholesale`` has the lock-safe form).

production_safety_constraints, part 1: foreign-key actions and CHECK constraints, all NOT VALID.

Every statement here only changes the catalog (it takes a brief lock bounded by schemagate's lock_timeout and scans
nothing): NOT VALID constraints are enforced for new writes immediately; revision 0003 validates existing rows in a
separate transaction.

- ledger_entries.order_id -> orders: now ON DELETE CASCADE;
- credit_transactions.order_id -> orders: new, ON DELETE SET NULL (the column is nullable);
- ten CHECK constraints (seed table "CHECK Constraints Added").

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHECKS = [
    ("check_credit_account_limit", "credit_accounts", "used_credit <= credit_limit"),
    ("check_credit_account_positive", "credit_accounts", "credit_limit >= 0"),
    ("check_credit_transaction_amount", "credit_transactions", "amount > 0"),
    ("check_ledger_entry_amount", "ledger_entries", "amount > 0"),
    ("check_payment_amount", "retailer_payments", "amount > 0"),
    ("check_stock_non_negative", "wholesaler_products", "stock >= 0"),
    ("check_reserved_stock_non_negative", "wholesaler_products", "reserved_stock >= 0"),
    ("check_stock_availability", "wholesaler_products", "stock >= reserved_stock"),
    ("check_order_amount_positive", "orders", "total_amount > 0"),
    ("check_reservation_quantity_positive", "stock_reservations", "quantity > 0"),
]


def upgrade() -> None:
    op.drop_constraint("ledger_entries_order_id_fkey", "ledger_entries", type_="foreignkey")
    op.create_foreign_key(
        "ledger_entries_order_id_fkey", "ledger_entries", "orders", ["order_id"], ["id"],
        ondelete="CASCADE", postgresql_not_valid=True,
    )
    op.create_foreign_key(
        "credit_transactions_order_id_fkey", "credit_transactions", "orders", ["order_id"], ["id"],
        ondelete="SET NULL", postgresql_not_valid=True,
    )
    for name, table, condition in CHECKS:
        op.create_check_constraint(name, table, condition, postgresql_not_valid=True)


def downgrade() -> None:
    for name, table, _ in reversed(CHECKS):
        op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{name}"')
    op.execute('ALTER TABLE "credit_transactions" DROP CONSTRAINT IF EXISTS "credit_transactions_order_id_fkey"')
    op.drop_constraint("ledger_entries_order_id_fkey", "ledger_entries", type_="foreignkey")
    op.create_foreign_key("ledger_entries_order_id_fkey", "ledger_entries", "orders", ["order_id"], ["id"])
