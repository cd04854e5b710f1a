"""Alembic environment of the slow test project.

The URL comes from ``sqlalchemy.url`` when set (schemagate's runner sets it), else from DATABASE_URL. Each revision
runs in its own transaction (``transaction_per_migration=True``) so that a NOT VALID constraint is committed before
a later revision validates it, and ``autocommit_block()`` can run CREATE INDEX CONCURRENTLY.
"""

import importlib.util
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None


def database_url() -> str:
    # sqlalchemy.url first: schemagate's runner sets it (and the variable it was told to use) to the target
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL to postgresql://user:password@host:port/database")
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql") and importlib.util.find_spec("psycopg") is not None:
        url = "postgresql+psycopg://" + rest
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        transaction_per_migration=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
