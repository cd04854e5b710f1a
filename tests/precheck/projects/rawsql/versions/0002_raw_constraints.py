"""constraints added with raw SQL (op.execute): CHECK, composite FKs (MATCH FULL and SIMPLE), UNIQUEs"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ADD CONSTRAINT ck_credit CHECK (used_credit <= credit_limit)")
    op.execute("ALTER TABLE accounts VALIDATE CONSTRAINT ck_limit_positive")
    op.execute('ALTER TABLE lines ADD CONSTRAINT fk_lines_order FOREIGN KEY (order_id, order_no) '
               'REFERENCES "Orders" (id, no) MATCH FULL')
    op.execute('ALTER TABLE refs ADD CONSTRAINT fk_refs_order FOREIGN KEY (order_id, order_no) '
               'REFERENCES "Orders" (id, no)')
    op.execute("ALTER TABLE accounts ADD CONSTRAINT uq_accounts_email UNIQUE (email)")
    op.execute("CREATE UNIQUE INDEX uq_lines_code ON lines (code, variant) NULLS NOT DISTINCT")
