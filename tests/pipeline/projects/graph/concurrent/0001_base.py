"""events, and "Sales"."Ev" with an index to rebuild

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
    op.execute('CREATE SCHEMA "Sales"')
    op.execute('CREATE TABLE "Sales"."Ev" ("Id" serial PRIMARY KEY, "Code" text, "Note" text)')
    op.execute('CREATE INDEX "ix_Ev_Note" ON "Sales"."Ev" ("Note")')


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
