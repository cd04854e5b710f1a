"""an enum label and an audit table outside a transaction, then an index built concurrently

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TYPE mood AS ENUM ('calm')")
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE mood ADD VALUE 'tense'")
        op.execute("CREATE TABLE events_audit (id int)")
        op.create_index("ix_events_kind", "events", ["kind"], postgresql_concurrently=True)


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
