"""The one classifier of the SQL statements revisions execute, and the log both capture paths fill.

Both the local path (``schemagate precheck``/``run``: ``runner.precheck`` capturing on the shadow database) and the
Kubernetes path (the injected runner's ``shadow-upgrade`` in the application's image, which writes ``statements``
into ``shadow-upgrade.json``) classify with ``classify`` and record into a ``StatementLog``, so both report the same
kinds: ``[{"revision": id|None, "kind": "ddl"|"dml"|"read", "sql": text, "tx": n | "autocommit": true,
"executemany"?: true}]``.

Kinds:

- ``dml``: changes rows (INSERT, UPDATE, DELETE, MERGE, COPY, TRUNCATE, also inside WITH);
- ``read``: reads rows of an application table (a data migration whose writes depend on the data, which the empty
  shadow database cannot show);
- ``ddl``: anything else that changes the database (CREATE, ALTER, DROP, COMMENT, GRANT, ...);
- ``other``: catalog reads, session and transaction statements, Alembic's bookkeeping on its version table.
"""

from __future__ import annotations

import re
from typing import Literal, TypedDict

Kind = Literal["dml", "read", "ddl", "other"]

MAX_STATEMENTS = 2000
MAX_SQL = 4000

_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.S)
_DML = re.compile(r"^\s*(WITH\b.*?\b(INSERT|UPDATE|DELETE|MERGE)\b|INSERT\b|UPDATE\b|DELETE\b|MERGE\b|COPY\b"
                  r"|TRUNCATE\b)", re.I | re.S)
_SESSION = re.compile(r"^\s*(SELECT|SHOW|SET|RESET|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START|EXPLAIN|VALUES"
                      r"|LOCK|DISCARD|LISTEN|NOTIFY|FETCH|DECLARE|CLOSE)\b", re.I)
_VERSION_TABLE = re.compile(r"\balembic_version\b", re.I)
_SELECT = re.compile(r"^\s*(SELECT|WITH)\b", re.I)
_FROM = re.compile(r"\b(FROM|JOIN)\s+((\"[^\"]+\"|\w+)(\s*\.\s*(\"[^\"]+\"|\w+))?)", re.I)
_SYSTEM = re.compile(r"^\"?(pg_catalog|information_schema|pg_\w+|alembic_version)\b", re.I)


def _version_pattern(version_table: str | None) -> re.Pattern[str]:
    if not version_table or version_table == "alembic_version":
        return _VERSION_TABLE
    return re.compile(r"(?<![\w$])" + re.escape(version_table) + r"(?![\w$])", re.I)


def classify(sql: str, version_table: str | None = None) -> Kind:
    """The kind of one statement (see the module docstring); comments are ignored. ``version_table``: the version
    table's name as the application's env.py configured the migration context (default ``alembic_version``):
    statements on it are Alembic's bookkeeping, wherever env.py puts it."""
    text = _COMMENTS.sub(" ", sql).strip()
    vt = _version_pattern(version_table)
    if vt.search(text) and (_DML.match(text) or _SELECT.match(text) or text.upper().startswith("CREATE TABLE")):
        return "other"  # Alembic's own bookkeeping
    if _DML.match(text):
        return "dml"
    if _SELECT.match(text):
        tables = [m.group(2) for m in _FROM.finditer(text)]
        if any(not _SYSTEM.match(t.split(".")[0].strip()) and not vt.fullmatch(t.split(".")[-1].strip('" '))
               for t in tables):
            return "read"
        return "other"
    if not text or _SESSION.match(text):
        return "other"
    return "ddl"


class Statement(TypedDict, total=False):
    revision: str | None
    kind: Kind
    sql: str  # at most MAX_SQL characters
    executemany: bool
    tx: int  # the number of the database transaction it ran in (1, 2, ... per capture)
    autocommit: bool  # ran outside a transaction (Alembic's autocommit_block)


class StatementLog:
    """The classified statements of a run, tagged with the revision running (``on_revision``); ``other`` is not
    kept, at most ``limit`` entries (``dropped`` counts the rest)."""

    def __init__(self, limit: int = MAX_STATEMENTS, version_table: str | None = None) -> None:
        self.version_table = version_table  # see classify
        self.revision: str | None = None
        self.statements: list[Statement] = []
        self.dropped = 0
        self.limit = limit

    def on_revision(self, rev: str) -> None:
        self.revision = rev

    def add(self, sql: str, executemany: bool = False, tx: int | None = None, autocommit: bool = False) -> None:
        """Record ``sql`` unless it is ``other``; ``tx`` numbers its transaction, ``autocommit`` when outside one."""
        kind = classify(sql, self.version_table)
        if kind == "other":
            return
        if len(self.statements) >= self.limit:
            self.dropped += 1
            return
        entry: Statement = {"revision": self.revision, "kind": kind, "sql": sql[:MAX_SQL]}
        if executemany:
            entry["executemany"] = True
        if autocommit:
            entry["autocommit"] = True
        elif tx is not None:
            entry["tx"] = tx
        self.statements.append(entry)

    def use_version_table(self, version_table: str) -> None:
        """The version table env.py's migration context really used (known once env.py ran): from here on, and
        for the statements already recorded, statements on it are Alembic's bookkeeping and are not kept."""
        if version_table == self.version_table:
            return
        self.version_table = version_table
        self.statements = [s for s in self.statements if classify(s["sql"], version_table) != "other"]

    @property
    def dml_revisions(self) -> list[str]:
        """The revisions that executed DML, in order of first appearance (``?`` for statements outside one)."""
        seen: list[str] = []
        for s in self.statements:
            if s["kind"] == "dml":
                r = s.get("revision") or "?"
                if r not in seen:
                    seen.append(r)
        return seen


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def _block_comment_end(sql: str, i: int) -> int:
    """The index after the (nested) ``/* */`` comment starting at ``i``."""
    depth, i, n = 1, i + 2, len(sql)
    while depth:
        if i >= n:
            raise ValueError("unterminated /* comment")
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _quoted_end(sql: str, i: int) -> int:
    """The index after the string constant (``'...'``, ``E'...'``) or quoted identifier (``"..."``) at ``i``."""
    ch, n = sql[i], len(sql)
    escapes = ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum()
                                                                         or sql[i - 2] == "_"))
    j = i + 1
    while True:
        if j >= n:
            raise ValueError("unterminated quoted identifier" if ch == '"' else "unterminated string")
        if escapes and sql[j] == "\\":
            j += 2
            continue
        if sql[j] == ch:
            if j + 1 < n and sql[j + 1] == ch:
                j += 2
                continue
            return j + 1
        j += 1


def _dollar_end(sql: str, i: int) -> int | None:
    """The index after the dollar-quoted string (``$tag$...$tag$``) at ``i``; None when ``$`` starts none."""
    m = _DOLLAR_TAG.match(sql, i)
    if not m or (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
        return None
    end = sql.find(m.group(0), m.end())
    if end < 0:
        raise ValueError("unterminated dollar-quoted string")
    return end + len(m.group(0))


def _skipped_end(sql: str, i: int) -> int | None:
    """The index after the comment, literal or quoted identifier starting at ``i``; None when none starts."""
    ch = sql[i]
    if ch == "-" and sql.startswith("--", i):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end
    if ch == "/" and sql.startswith("/*", i):
        return _block_comment_end(sql, i)
    if ch in "'\"":
        return _quoted_end(sql, i)
    if ch == "$":
        return _dollar_end(sql, i)
    return None


def lex(sql: str) -> tuple[list[str], str]:
    """Split ``sql`` into its statements as PostgreSQL's lexer would (scan.l): ``;`` separates statements only
    outside string constants (``'...'`` with ``''``, ``E'...'`` with backslash escapes), quoted identifiers
    (``"..."``), dollar-quoted strings (``$tag$...$tag$``), ``--`` and nested ``/* */`` comments.

    Returns ``(statements, skeleton)``: the non-empty statements, stripped, and the whole text with every literal,
    quoted identifier and comment replaced by a space (for keyword checks that must not look inside them).
    Raises ``ValueError`` for an unterminated literal, identifier or comment."""
    out: list[str] = []
    skel: list[str] = []
    start = i = 0
    while i < len(sql):
        end = _skipped_end(sql, i)
        if end is not None:
            i = end
            skel.append(" ")
            continue
        if sql[i] == ";":
            stmt = sql[start:i].strip()
            if stmt and "".join(skel).strip():
                out.append(stmt)
            skel.append(";")
            start = i + 1
        else:
            skel.append(sql[i])
        i += 1
    tail = sql[start:].strip()
    if tail and "".join(skel).split(";")[-1].strip():
        out.append(tail)
    return out, "".join(skel)


_READ_ONLY_START = re.compile(r"^[\s(]*(SELECT|WITH|VALUES|TABLE)\b", re.I)
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|INTO)\b", re.I)


def single_select_problem(sql: str) -> str | None:
    """Why ``sql`` is not one read-only query (``SELECT``, ``WITH … SELECT``, ``VALUES`` or ``TABLE``), or None.

    A user check must be exactly one statement (PostgreSQL's extended query protocol refuses several in one
    message, and a ``COMMIT`` in a list would end the read-only transaction it runs in), must start with one of
    those keywords, and must contain no data-modifying ``WITH`` part and no ``SELECT … INTO`` (which creates a
    table). The read-only transaction it runs in enforces the same at run time; this says so before anything runs."""
    try:
        statements, skeleton = lex(sql)
    except ValueError as exc:
        return str(exc)
    if len(statements) != 1:
        return f"{len(statements)} statements; a check is exactly one SELECT" if statements else "no statement"
    body = skeleton.strip().rstrip(";")
    if ";" in body:
        return "more than one statement; a check is exactly one SELECT"
    if not _READ_ONLY_START.match(body):
        first = body.split(None, 1)[0] if body.split() else ""
        return f"it starts with {first!r}; a check is one SELECT (or WITH/VALUES/TABLE) returning a count"
    m = _WRITES.search(body)
    if m:
        return f"it contains {m.group(1).upper()}; a check only reads"
    return None


def normalized(sql: str) -> str:
    """``sql`` with every run of white space one blank, stripped: how two runs of the same revisions are matched
    statement by statement (``analysis.stepwise.DataCounter``, ``runner.inject.datarun``)."""
    return re.sub(r"\s+", " ", sql or "").strip()


def in_transaction(dbapi: object) -> bool:
    """Whether a DB-API connection of psycopg 3 (``info.transaction_status``) or psycopg2
    (``get_transaction_status()``) is inside a transaction (libpq's ``PQtransactionStatus`` is not idle): the
    counts run there under ``SAVEPOINT``; otherwise (Alembic's ``autocommit_block``) each query is its own
    transaction."""
    info = getattr(dbapi, "info", None)
    if info is not None and hasattr(info, "transaction_status"):  # psycopg 3
        return int(info.transaction_status) != 0
    status = getattr(dbapi, "get_transaction_status", None)  # psycopg2
    return bool(status and status() != 0)
