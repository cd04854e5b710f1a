"""production_safety_constraints, part 1: foreign-key actions and CHECK constraints, all NOT VALID.

Every statement here only changes the catalog (it scans nothing): NOT VALID constraints are enforced for new
writes immediately; revision 0003 validates existing rows in a separate transaction.

- ledger_entries.order_id -> orders: now ON DELETE CASCADE;
- credit_transactions.order_id -> orders: new, ON DELETE SET NULL (the column is nullable);
- ten CHECK constraints (seed table "CHECK Constraints Added").

Lock safety (why the statements look like this): adding a CHECK takes ACCESS EXCLUSIVE on its table, adding a
foreign key SHARE ROW EXCLUSIVE on both tables, dropping one ACCESS EXCLUSIVE on both (PostgreSQL documentation,
"ALTER TABLE", and "Explicit Locking"). Holding such a lock on one table while waiting for another is how a
migration deadlocks with the application: holding ``orders`` it waits for ``stock_reservations``, while an
application INSERT into ``stock_reservations`` waits on ``orders`` for its foreign-key check. So:

- every statement runs in its own transaction (``autocommit_block``): one ALTER TABLE per table, which holds a
  strong lock on that table only and for milliseconds; it waits at most ``lock_timeout`` (schemagate's migrate
  step sets it and retries) while holding nothing else, so it can be in no deadlock cycle;
- a foreign-key statement must lock two tables (the referencing one, then the referenced one, always in that
  order). It runs with a ``lock_timeout`` (:data:`TWO_TABLE_LOCK_TIMEOUT`) below PostgreSQL's default
  ``deadlock_timeout`` (1 s): should an application transaction close a cycle, this statement gives up first
  (SQLSTATE 55P03, retried by the migrate step) before the deadlock detector could abort the application's;
- each statement is idempotent (``DROP CONSTRAINT IF EXISTS`` then ``ADD`` in one ALTER TABLE), so a retry after a
  lock timeout part-way through the revision re-runs it cleanly.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# below PostgreSQL's default deadlock_timeout (1s): see the module docstring
TWO_TABLE_LOCK_TIMEOUT = "500ms"

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


def _tables() -> list[str]:
    return list(dict.fromkeys(table for _, table, _ in CHECKS))


def _two_table(sql: str) -> None:
    """One statement that locks two tables, with a lock_timeout below deadlock_timeout (then the session's)."""
    op.execute(f"SET lock_timeout = '{TWO_TABLE_LOCK_TIMEOUT}'")
    op.execute(sql)
    op.execute("RESET lock_timeout")


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _two_table(
            'ALTER TABLE "ledger_entries" DROP CONSTRAINT IF EXISTS "ledger_entries_order_id_fkey", '
            'ADD CONSTRAINT "ledger_entries_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "orders" ("id") '
            "ON DELETE CASCADE NOT VALID"
        )
        _two_table(
            'ALTER TABLE "credit_transactions" DROP CONSTRAINT IF EXISTS "credit_transactions_order_id_fkey", '
            'ADD CONSTRAINT "credit_transactions_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "orders" ("id") '
            "ON DELETE SET NULL NOT VALID"
        )
        for table in _tables():
            actions = []
            for name, t, condition in CHECKS:
                if t == table:
                    actions.append(f'DROP CONSTRAINT IF EXISTS "{name}", '
                                   f'ADD CONSTRAINT "{name}" CHECK ({condition}) NOT VALID')
            op.execute(f'ALTER TABLE "{table}" ' + ", ".join(actions))


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for table in reversed(_tables()):
            drops = [f'DROP CONSTRAINT IF EXISTS "{name}"' for name, t, _ in reversed(CHECKS) if t == table]
            op.execute(f'ALTER TABLE "{table}" ' + ", ".join(drops))
        _two_table('ALTER TABLE "credit_transactions" DROP CONSTRAINT IF EXISTS "credit_transactions_order_id_fkey"')
        _two_table(
            'ALTER TABLE "ledger_entries" DROP CONSTRAINT IF EXISTS "ledger_entries_order_id_fkey", '
            'ADD CONSTRAINT "ledger_entries_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "orders" ("id")'
        )
