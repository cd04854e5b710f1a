"""a unique index built concurrently on a mixed-case schema and table

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_Ev_Code", "Ev", ["Code"], unique=True, schema="Sales", postgresql_concurrently=True)


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
