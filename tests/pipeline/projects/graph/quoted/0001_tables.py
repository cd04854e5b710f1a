"""a schema with a dot, a table with a dot, a mixed-case column with a dot; and a decoy pair

"Sales.EU"."order.archive" and "Sales.EU.order"."archive" both print as Sales.EU.order.archive when joined with
dots: only separate fields tell them apart.

Revision ID: 0001
Revises: None
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute('CREATE SCHEMA "Sales.EU"')
    op.execute('CREATE SCHEMA "Sales.EU.order"')
    op.execute('CREATE TABLE "Sales.EU"."order.archive" ("Id" serial PRIMARY KEY, "Unit.Price" numeric, "Sku" text)')
    op.execute('CREATE TABLE "Sales.EU.order"."archive" ("Id" serial PRIMARY KEY, "Unit.Price" numeric, "Sku" text)')


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
