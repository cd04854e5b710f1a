"""The injected runner: what runs *inside the application's image* (``python -m schemagate.runner.inject ...``).

It imports only the standard library, SQLAlchemy, Alembic and ``schemagate.contract`` (standard library only);
import-linter contracts in ``pyproject.toml`` enforce it, and ``INJECTED_FILES`` (what ``install-runner`` copies) is
checked against its import closure. The application's own ``env.py`` runs unchanged: it reads the URL from the environment variable ``url_env``
(set here for the duration of a call) or from ``sqlalchemy.url`` (also set), and ``lock_timeout`` /
``statement_timeout`` reach every session the migration opens through ``PGOPTIONS`` (read by libpq, so psycopg and
psycopg2; not asyncpg).

Modules: ``config`` (Alembic config, session environment, import isolation), ``revisions``
(``plan``), ``apply`` (``upgrade``, ``render_sql``), ``lock`` (advisory lock, backoff), ``capture`` (statement
capture), ``migrate`` (``migrate``), ``shadow`` (``shadow_upgrade``), ``__main__`` (the CLI).

Stable API (other steps call these; keep the signatures). Every step takes the frozen ``contract.target.Target``
(``Target(config, revision="head", url=None, url_env="DATABASE_URL")``: project, target revision, database),
built once from the options and passed down:

``revisions.plan(target) -> Plan``
    ``{"current": str|None, "target": resolved id, "pending": [ids in apply order], "heads": [ids]}``.
    Raises ``MultipleHeads`` (names the heads) when ``target`` is head(s) and the scripts have several
    heads, ``UnknownRevision`` for an unknown target (or a database revision the scripts do not know),
    ``InvalidInput`` for a downgrade target or a missing config. The URL is only used through env.py.

``apply.upgrade(target, lock_timeout="5s", statement_timeout=None, *, planned=None, expect_current=False,
expect_server=None) -> dict``
    Runs ``alembic upgrade`` programmatically. Returns ``{"fromRevision", "toRevision", "applied": [ids],
    "pending": [ids], "lockTimeout", "statementTimeout", "sql": None}`` (the offline rendering is
    ``render_sql``, used only where nothing runs in a shadow). On failure raises ``MigrationFailed`` (``.revision``,
    ``.statement``, ``.current_revision``: the message names the revision and the failing statement; with
    ``transaction_per_migration`` the database stays at the previous revision), or ``LockTimeout``
    (transient) when a statement hit ``lock_timeout``. No advisory lock and no retries here: see ``migrate``.

``migrate.migrate(target, lock_timeout, statement_timeout, retries=5, ...) -> StepResult``
    ``upgrade`` serialised by a session advisory lock (polled with ``pg_try_advisory_lock`` on a dedicated
    autocommit connection: a blocking wait deadlocks against CREATE INDEX CONCURRENTLY) and retried on lock
    timeouts with capped exponential backoff.

``shadow.shadow_upgrade(target, workdir=None) -> dict``
    ``upgrade`` on a shadow database on the real database's plan, capturing the statements it executes; writes
    ``workdir/shadow-upgrade.json`` when ``workdir`` is given.

CLI (prints exactly one StepResult JSON on stdout, writes ``--termination-log`` / ``$SCHEMAGATE_TERMINATION_LOG``)::

    python -m schemagate.runner.inject migrate        -c alembic.ini --target head --database-url-env DATABASE_URL
    python -m schemagate.runner.inject shadow-upgrade -c alembic.ini --target head --database-url-env SHADOW_URL \
        --workdir /work
    python -m schemagate.runner.inject plan           -c alembic.ini --target head
"""

# The files ``schemagate install-runner`` copies into the application's image, relative to the ``schemagate``
# package: this package and the standard-library-only modules it imports (a test checks it is the import closure).
INJECTED_FILES: tuple[str, ...] = (
    "__init__.py",
    "runner/__init__.py",
    "runner/inject",
    "contract",
)
