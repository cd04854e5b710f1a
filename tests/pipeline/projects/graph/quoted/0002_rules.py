"""NOT NULL on a mixed-case dotted column, a CHECK and a unique index, on the dotted table only

Raw SQL: SQLAlchemy reads a dot in a schema name as database.schema, so op.alter_column(schema="Sales.EU") would
render "Sales"."EU" (plain alembic upgrade fails the same way).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute('ALTER TABLE "Sales.EU"."order.archive" ALTER COLUMN "Unit.Price" SET NOT NULL')
    op.execute('ALTER TABLE "Sales.EU"."order.archive" ADD CONSTRAINT "ck_Archive_Price" CHECK ("Unit.Price" >= 0)')
    op.execute('CREATE UNIQUE INDEX "ix_Archive_Sku" ON "Sales.EU"."order.archive" ("Sku")')


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
