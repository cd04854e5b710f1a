"""merge the three branches

Revision ID: 0003
Revises: 0002a, 0002b, 0002c
"""

revision = "0003"
down_revision = ('0002a', '0002b', '0002c')
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("these tests only upgrade")
