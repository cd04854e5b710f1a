"""Optimistic locking: menu_items.version and check_stock_non_negative (NOT VALID).

Short, lock-bounded DDL only (schemagate runs it with a lock_timeout and retries):
- ``version integer NOT NULL DEFAULT 0``: a constant default is a catalog-only change since PostgreSQL 11;
- ``check_stock_non_negative`` is added NOT VALID: enforced for new writes at once, existing rows are checked by
  VALIDATE in revision 0003, in a separate transaction that does not block reads or writes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("menu_items", sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    op.create_check_constraint(
        "check_stock_non_negative", "menu_items", "stock >= 0", postgresql_not_valid=True
    )


def downgrade() -> None:
    # the seed's rollback: drop the constraint, then the column
    op.execute('ALTER TABLE "menu_items" DROP CONSTRAINT IF EXISTS "check_stock_non_negative"')
    op.execute('ALTER TABLE "menu_items" DROP COLUMN IF EXISTS "version"')
