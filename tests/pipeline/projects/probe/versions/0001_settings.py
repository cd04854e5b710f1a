"""record the session's lock_timeout and statement_timeout (pg_settings.setting: milliseconds)

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE seen_settings AS SELECT name, setting, unit FROM pg_settings "
               "WHERE name IN ('lock_timeout', 'statement_timeout')")


def downgrade() -> None:
    op.drop_table("seen_settings")
