"""the revision after the slow one"""
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.execute("ALTER TABLE notes ADD COLUMN body text")
    op.execute("INSERT INTO applied_log (revision) VALUES ('0003')")


def downgrade():
    op.execute("ALTER TABLE notes DROP COLUMN body")
