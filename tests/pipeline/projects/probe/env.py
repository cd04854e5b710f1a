"""Alembic environment of the probe test project.

The URL comes from ``sqlalchemy.url`` when set (schemagate's runner sets it), else from DATABASE_URL. The version
table is ``PROBE_VERSION_TABLE`` in ``PROBE_VERSION_TABLE_SCHEMA`` when set (Alembic's default otherwise); with
``PROBE_SEARCH_PATH`` env.py's engine sets the session's search_path (``connect_args``), not the role's. Every
execution of this file appends ``<purpose> <database>@<port>`` to the file named by ``PROBE_ENV_LOG`` (when set): tests
count how often one ``schemagate run`` executes the application's env.py, and for what.
"""

import importlib.util
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def probe(purpose: str, database: str) -> None:
    """One line per execution in PROBE_ENV_LOG: purpose (plan = read the version table only, migrate, offline)
    and ``database@port`` (the precheck's throw-away shadow server has a database of the same name)."""
    if os.environ.get("PROBE_ENV_LOG"):
        with open(os.environ["PROBE_ENV_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{purpose} {database}\n")
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None


def database_url() -> str:
    # sqlalchemy.url first: schemagate's runner sets it (and the variable it was told to use) to the target;
    # PROBE_APP_DB (tests only) plays an env.py that reads its own variable first and ignores both
    url = os.environ.get("PROBE_APP_DB") or config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("set DATABASE_URL to postgresql://user:password@host:port/database")
    scheme, _, rest = url.partition("://")
    if scheme in ("postgres", "postgresql") and importlib.util.find_spec("psycopg") is not None:
        url = "postgresql+psycopg://" + rest
    return url


def version_table() -> dict:
    return {"version_table": os.environ.get("PROBE_VERSION_TABLE") or "alembic_version",
            "version_table_schema": os.environ.get("PROBE_VERSION_TABLE_SCHEMA") or None}


def run_migrations_offline() -> None:
    from urllib.parse import urlsplit

    u = urlsplit(database_url())
    probe("offline", f"{u.path.lstrip('/')}@{u.port or 5432}")
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        **version_table(),
        transaction_per_migration=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    search_path = os.environ.get("PROBE_SEARCH_PATH")
    connect_args = {"options": f"-c search_path={search_path}"} if search_path else {}
    engine = create_engine(database_url(), poolclass=pool.NullPool, connect_args=connect_args)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,
            **version_table(),
        )
        # Alembic's read-only runs (current revision, plan) are configured with dont_mutate
        probe("plan" if context.get_context().opts.get("dont_mutate") else "migrate",
              connection.exec_driver_sql("SELECT current_database() || '@' || current_setting('port')").scalar())
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
