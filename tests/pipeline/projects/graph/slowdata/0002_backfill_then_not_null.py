"""a backfill, 3 s in pg_sleep, then NOT NULL: the precheck counts it after the backfill, in a data-carrying shadow"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("UPDATE items SET qty = 0 WHERE qty IS NULL")
    op.execute("SELECT pg_sleep(3)")
    op.execute("ALTER TABLE items ALTER COLUMN qty SET NOT NULL")
    op.execute("INSERT INTO applied_log (revision) VALUES ('0002')")


def downgrade():
    op.execute("ALTER TABLE items ALTER COLUMN qty DROP NOT NULL")
