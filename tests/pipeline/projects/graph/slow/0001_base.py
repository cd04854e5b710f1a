"""base: a log of the revisions applied (one row each, in the revision's own transaction)"""
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.execute("CREATE TABLE applied_log (revision text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
    op.execute("INSERT INTO applied_log (revision) VALUES ('0001')")


def downgrade():
    op.execute("DROP TABLE applied_log")
