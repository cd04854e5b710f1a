"""rebuild an index without blocking writers (REINDEX CONCURRENTLY), then index events.kind concurrently

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute('REINDEX INDEX CONCURRENTLY "Sales"."ix_Ev_Note"')
        op.create_index("ix_events_kind", "events", ["kind"], postgresql_concurrently=True)


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
