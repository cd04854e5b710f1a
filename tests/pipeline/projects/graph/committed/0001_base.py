"""events

Revision ID: 0001
Revises: None
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE events (id serial PRIMARY KEY, kind text)")


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
