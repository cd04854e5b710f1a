"""production_safety_constraints, part 2: validate the constraints, build the order indexes concurrently.

VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE on the table (and ROW SHARE on the referenced table for a foreign
key): reads and writes continue during the scan. The composite indexes of the seed (status+created_at,
status+deleted_at, wholesaler_id+final_wholesaler_id+status) are built with CREATE INDEX CONCURRENTLY in an
autocommit block; an INVALID leftover of an interrupted build is dropped first.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VALIDATE = [
    ("ledger_entries", "ledger_entries_order_id_fkey"),
    ("credit_transactions", "credit_transactions_order_id_fkey"),
    ("credit_accounts", "check_credit_account_limit"),
    ("credit_accounts", "check_credit_account_positive"),
    ("credit_transactions", "check_credit_transaction_amount"),
    ("ledger_entries", "check_ledger_entry_amount"),
    ("retailer_payments", "check_payment_amount"),
    ("wholesaler_products", "check_stock_non_negative"),
    ("wholesaler_products", "check_reserved_stock_non_negative"),
    ("wholesaler_products", "check_stock_availability"),
    ("orders", "check_order_amount_positive"),
    ("stock_reservations", "check_reservation_quantity_positive"),
]

INDEXES = [
    ("orders_status_created_at_idx", ["status", "created_at"]),
    ("orders_status_deleted_at_idx", ["status", "deleted_at"]),
    ("orders_wholesaler_id_final_wholesaler_id_status_idx", ["wholesaler_id", "final_wholesaler_id", "status"]),
]


def _drop_invalid_index(name: str) -> None:
    bind = op.get_bind()
    invalid = bind.exec_driver_sql(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %(name)s AND NOT i.indisvalid",
        {"name": name},
    ).first()
    if invalid:
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def upgrade() -> None:
    for table, name in VALIDATE:
        op.execute(f'ALTER TABLE "{table}" VALIDATE CONSTRAINT "{name}"')
    with op.get_context().autocommit_block():
        for name, columns in INDEXES:
            if not op.get_context().as_sql:
                _drop_invalid_index(name)
            op.create_index(name, "orders", columns, postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _ in reversed(INDEXES):
            op.drop_index(name, "orders", postgresql_concurrently=True, if_exists=True)
