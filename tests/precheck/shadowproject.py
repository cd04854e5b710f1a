"""Write small Alembic projects for the shadow tests: ``make_project(dir, revisions, version_table=...)``."""

from __future__ import annotations

import textwrap
from pathlib import Path

ENV_PY = '''\
import os

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
OPTS = {opts}


def url():
    u = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if u.startswith("postgresql://"):
        u = "postgresql+psycopg://" + u[len("postgresql://"):]
    return u


if context.is_offline_mode():
    context.configure(url=url(), literal_binds=True, transaction_per_migration=True, **OPTS)
    with context.begin_transaction():
        context.run_migrations()
else:
    section = config.get_section(config.config_ini_section, {{}})
    section["sqlalchemy.url"] = url()
    with engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool).connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True, **OPTS)
        with context.begin_transaction():
            context.run_migrations()
'''

REVISION = '''\
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
'''


def make_project(root: Path, revisions: list[str], *, version_table: str | None = None,
                 version_table_schema: str | None = None) -> str:
    """A project whose revision ``000N`` runs the N-th Python body (``op.execute(...)`` lines); returns
    alembic.ini."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "versions").mkdir(exist_ok=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n", encoding="utf-8")
    opts: dict[str, str] = {}
    if version_table:
        opts["version_table"] = version_table
    if version_table_schema:
        opts["version_table_schema"] = version_table_schema
    (root / "env.py").write_text(ENV_PY.format(opts=repr(opts)), encoding="utf-8")
    down = None
    for i, body in enumerate(revisions, start=1):
        rev = f"{i:04d}"
        (root / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, body=textwrap.indent(textwrap.dedent(body).strip(), "    ")),
            encoding="utf-8")
        down = rev
    return str(root / "alembic.ini")
