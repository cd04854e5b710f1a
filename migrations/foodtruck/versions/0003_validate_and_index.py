"""Validate check_stock_non_negative and build idx_menu_items_version concurrently.

VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE (reads and writes continue) and runs in this revision's own
transaction, after 0002 committed the NOT VALID constraint. The index is built with CREATE INDEX CONCURRENTLY in an
autocommit block; an INVALID leftover of an interrupted build is dropped first (IF NOT EXISTS would keep it).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


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
    op.execute('ALTER TABLE "menu_items" VALIDATE CONSTRAINT "check_stock_non_negative"')
    with op.get_context().autocommit_block():
        if not op.get_context().as_sql:
            _drop_invalid_index("idx_menu_items_version")
        op.create_index(
            "idx_menu_items_version", "menu_items", ["version"], postgresql_concurrently=True, if_not_exists=True
        )


def downgrade() -> None:
    # the seed's rollback: DROP INDEX IF EXISTS "idx_menu_items_version" (concurrently, without blocking writes)
    with op.get_context().autocommit_block():
        op.drop_index("idx_menu_items_version", "menu_items", postgresql_concurrently=True, if_exists=True)
