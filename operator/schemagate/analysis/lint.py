"""Lint the pending revisions' SQL with squawk (PyPI ``squawk-cli``, Apache-2.0 OR MIT) and group the findings.

Input is the offline rendering (``alembic upgrade cur:target --sql``); when that rendering fails (a revision
reads data, e.g. an ORM data migration), the caller passes the DDL captured during the shadow run instead and
says so in ``note`` (:func:`schemagate.analysis.capture.ddl_script`).

Result (the precheck's ``data.lint``)::

    {"available": bool, "findings": [{"rule", "count", "message"}], "total": int, "blocking": int,
     "source": "offline"|"captured"|null, "note": str|null}

``blocking`` counts findings of rules that mean a long lock or a breaking change (:data:`BLOCKING_RULES`);
the others (style, robustness) are advisory. ``require-lock-timeout`` and ``require-statement-timeout`` are
excluded by default because schemagate's migrate step sets ``lock_timeout`` (and ``statement_timeout`` when
configured) on every session itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from schemagate.contract.stepresult import LintFinding, LintResult

BLOCKING_RULES = frozenset({
    "adding-field-with-default",
    "adding-foreign-key-constraint",
    "adding-not-nullable-field",
    "adding-required-field",
    "adding-serial-primary-key-field",
    "ban-alter-domain-with-add-constraint",
    "ban-concurrent-index-creation-in-transaction",
    "ban-create-domain-with-constraint",
    "ban-drop-column",
    "ban-drop-database",
    "ban-drop-not-null",
    "ban-drop-table",
    "ban-truncate-cascade",
    "changing-column-type",
    "constraint-missing-not-valid",
    "disallowed-unique-constraint",
    "renaming-column",
    "renaming-table",
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    "require-concurrent-reindex",
    "require-concurrent-partition-detach",
})
DEFAULT_EXCLUDED = ("require-lock-timeout", "require-statement-timeout")


def find_squawk(explicit: str | None = None) -> str | None:
    """``explicit``, ``$SCHEMAGATE_SQUAWK``, ``squawk`` next to this Python (a venv), then ``PATH``."""
    for cand in (explicit, os.environ.get("SCHEMAGATE_SQUAWK")):
        if cand:
            return cand if Path(cand).exists() or shutil.which(cand) else None
    beside = Path(sys.executable).parent / "squawk"
    if beside.exists():
        return str(beside)
    return shutil.which("squawk")


def unavailable(note: str) -> LintResult:
    """The result when nothing was linted, saying why."""
    return {"available": False, "findings": [], "total": 0, "blocking": 0, "source": None, "note": note}


def group_findings(raw: Iterable[Mapping[str, object]]) -> list[LintFinding]:
    """squawk's JSON findings grouped by rule: ``[{rule, count, message}]``, blocking rules first."""
    groups: dict[str, LintFinding] = {}
    for f in raw:
        rule = str(f.get("rule_name") or "unknown")
        g = groups.setdefault(rule, {"rule": rule, "count": 0, "message": str(f.get("message") or "")})
        g["count"] += 1
    return sorted(groups.values(), key=lambda g: (g["rule"] not in BLOCKING_RULES, -g["count"], g["rule"]))


def lint_sql(
    sql: str,
    *,
    squawk: str | None = None,
    pg_version: str | None = None,
    exclude: Iterable[str] = DEFAULT_EXCLUDED,
    source: str = "offline",
    timeout: float = 120,
) -> LintResult:
    """Run squawk on ``sql``; never raises for a missing or failing squawk (``available: false`` + ``note``)."""
    exe = find_squawk(squawk)
    if exe is None:
        return unavailable("squawk is not installed (pip install squawk-cli): the SQL was not linted")
    if not sql.strip():
        return {"available": True, "findings": [], "total": 0, "blocking": 0, "source": source,
                "note": "no SQL to lint"}
    excluded = list(exclude)
    with tempfile.TemporaryDirectory(prefix="schemagate-lint-") as tmp:
        path = Path(tmp) / "pending.sql"
        path.write_text(sql, encoding="utf-8")
        args = [exe, "--reporter=json", "--no-error-on-unmatched-pattern"]
        if pg_version:
            args.append(f"--pg-version={pg_version}")
        if excluded:
            args.append("--exclude=" + ",".join(excluded))
        args.append(str(path))
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tmp, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return unavailable(f"squawk could not run: {e}")
    if p.returncode not in (0, 1):
        return unavailable(f"squawk failed (exit {p.returncode}): {p.stderr.strip()[:300]}")
    try:
        raw = json.loads(p.stdout or "[]")
    except json.JSONDecodeError:
        return unavailable(f"squawk printed no JSON: {(p.stdout or p.stderr).strip()[:300]}")
    findings = group_findings(raw if isinstance(raw, list) else [])
    total = sum(g["count"] for g in findings)
    blocking = sum(g["count"] for g in findings if g["rule"] in BLOCKING_RULES)
    note = None
    if excluded:
        note = "excluded: " + ", ".join(excluded) + " (schemagate's migrate step sets the timeouts)"
    return {"available": True, "findings": findings, "total": total, "blocking": blocking, "source": source,
            "note": note}


def pg_major_version(server_version_num: int) -> str:
    return f"{server_version_num // 10000}.0"
