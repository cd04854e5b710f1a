"""Alembic env.py of a test project (the shape most applications use)."""

import os
import sys

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

target_metadata = None


def url() -> str:
    u = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if u.startswith("postgresql://"):
        u = "postgresql+psycopg://" + u[len("postgresql://"):]
    return u


def run_migrations_offline() -> None:
    context.configure(url=url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = url()
    connectable = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
