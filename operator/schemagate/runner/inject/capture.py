"""Capture: every statement any SQLAlchemy engine executes while revisions run (the engine the application's
``env.py`` creates included: the listener is on the ``Engine`` class), classified by ``contract.sqlkind`` and tagged
with the database transaction it ran in.

Used on both paths: the injected runner's ``shadow-upgrade`` (Kubernetes) and the precheck's shadow run (laptop).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from schemagate.contract.sqlkind import StatementLog


@contextlib.contextmanager
def capture_statements(log: StatementLog | None = None) -> Iterator[StatementLog]:
    """Record into ``log`` (a new one when None) the statements executed while the block runs, with the number of
    the database transaction each ran in (``tx``) or ``autocommit`` (Alembic's ``autocommit_block``): the lock lint
    (``schemagate.analysis.locks``) groups statements by transaction. Tag them with the revision through
    ``log.on_revision``."""
    log = log if log is not None else StatementLog()
    open_tx: dict[int, int] = {}  # id(Connection) -> number of its open transaction
    numbers = itertools.count(1)

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        auto = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if not auto and id(conn) not in open_tx:
            open_tx[id(conn)] = next(numbers)
        log.add(statement, executemany, tx=None if auto else open_tx[id(conn)], autocommit=auto)

    def end(conn: Any) -> None:
        open_tx.pop(id(conn), None)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    sa.event.listen(sa.engine.Engine, "commit", end)
    sa.event.listen(sa.engine.Engine, "rollback", end)
    try:
        yield log
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before)
        sa.event.remove(sa.engine.Engine, "commit", end)
        sa.event.remove(sa.engine.Engine, "rollback", end)
