"""split full_name into first_name/last_name with an ORM data migration

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


class _Base(DeclarativeBase):
    pass


class Customer(_Base):  # the model as of this revision (not the application's current one)
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    full_name: Mapped[str] = mapped_column(sa.Text)
    first_name: Mapped[str | None] = mapped_column(sa.Text)
    last_name: Mapped[str | None] = mapped_column(sa.Text)


def upgrade() -> None:
    op.add_column("customers", sa.Column("first_name", sa.Text(), nullable=True))
    op.add_column("customers", sa.Column("last_name", sa.Text(), nullable=True))
    if op.get_context().as_sql:
        return
    session = Session(bind=op.get_bind())
    for c in session.query(Customer).order_by(Customer.id):
        first, _, last = c.full_name.partition(" ")
        c.first_name, c.last_name = first, last or None
    session.flush()


def downgrade() -> None:
    op.drop_column("customers", "last_name")
    op.drop_column("customers", "first_name")
