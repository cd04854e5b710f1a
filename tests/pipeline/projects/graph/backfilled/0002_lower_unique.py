"""codes folded to lower case, then a unique index on them built concurrently

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE tags SET code = lower(code) WHERE code <> lower(code)")
    with op.get_context().autocommit_block():  # commits the UPDATE first
        op.create_index("ix_tags_code", "tags", ["code"], unique=True, postgresql_concurrently=True)


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
