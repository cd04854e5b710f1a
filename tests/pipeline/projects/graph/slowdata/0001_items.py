"""base: items with a quantity that may be NULL, and a log of the revisions applied (one row each)"""
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.execute("CREATE TABLE applied_log (revision text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
    op.execute("CREATE TABLE items (id int PRIMARY KEY, qty int)")
    op.execute("INSERT INTO items SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE g END FROM generate_series(1, 100) g")
    op.execute("INSERT INTO applied_log (revision) VALUES ('0001')")


def downgrade():
    op.execute("DROP TABLE items")
    op.execute("DROP TABLE applied_log")
