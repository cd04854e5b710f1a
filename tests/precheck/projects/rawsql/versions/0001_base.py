"""base tables; one CHECK already there but NOT VALID"""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text, used_credit numeric, credit_limit numeric)")
    op.execute("ALTER TABLE accounts ADD CONSTRAINT ck_limit_positive CHECK (credit_limit >= 0) NOT VALID")
    op.execute('CREATE TABLE "Orders" (id int, no int, PRIMARY KEY (id, no))')
    op.execute("CREATE TABLE lines (id int PRIMARY KEY, order_id int, order_no int, code text, variant text)")
    op.execute("CREATE TABLE refs (id int PRIMARY KEY, order_id int, order_no int)")
