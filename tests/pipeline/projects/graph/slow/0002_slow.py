"""a slow revision: 3 s in pg_sleep, time for a test to terminate a backend while it runs"""
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.execute("CREATE TABLE notes (id int PRIMARY KEY)")
    op.execute("SELECT pg_sleep(3)")
    op.execute("INSERT INTO applied_log (revision) VALUES ('0002')")


def downgrade():
    op.execute("DROP TABLE notes")
