"""Credential masking: every message, log line, Event, status field and termination message goes through
``redact`` before it leaves the process.

``redact(text)`` masks the password of every URL (``scheme://user:PASSWORD@host``), every libpq or environment
style key/value (``password=...``, ``PGPASSWORD=...``, ``"password": "..."``), SQLAlchemy's ``password='...'`` repr,
and every secret registered with ``register_secret`` (also in URL-encoded form). Standard library only.

Only real secrets: a key that is part of a path or a name (``/etc/passwd: File exists``) is not a password, and a
URL without ``user:password@`` registers nothing (its port stays visible; ``dburl.credential_candidates``).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

_SECRETS: set[str] = set()

# scheme://user:password@host  (the password may be empty; it ends at the LAST '@' before whitespace/quote, so a
# password holding an unencoded '@' or '/' is masked whole)
_URL_PW = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)(?P<at>@)")
# libpq key/value and env style: password=..., PGPASSWORD=..., "password": "...", password: ... (YAML), PWD=...
# (ODBC; with '=' only: "pwd: /work" is the shell's). Not a file name: the key follows no path or name character
# ("/etc/passwd: File exists", "x.passwd=").
_KV_PW = re.compile(
    r"(?P<pre>(?<![\w/\\.~-])(?:(?:pg)?passw(?:or)?d[\"']?\s*[=:]|pwd[\"']?\s*=)\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)]+)",
    re.IGNORECASE,
)
# sqlalchemy's repr of URL objects: password='...'
_REPR_PW = re.compile(r"(?P<pre>password=)(?P<pw>'[^']*'|\"[^\"]*\")", re.IGNORECASE)


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` (4 characters or more) so ``redact`` masks it wherever it appears, also URL-encoded."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)
        quoted = urllib.parse.quote(secret, safe="")
        if quoted != secret:
            _SECRETS.add(quoted)


def redact(text: object) -> str:
    """``str(text)`` with every password masked as ``***`` (None becomes ``""``)."""
    s = str(text) if text is not None else ""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in s:
            s = s.replace(secret, MASK)
    s = _URL_PW.sub(lambda m: m.group("pre") + (MASK if m.group("pw") else "") + m.group("at"), s)
    s = _REPR_PW.sub(lambda m: m.group("pre") + "'" + MASK + "'", s)
    s = _KV_PW.sub(lambda m: m.group("pre") + MASK, s)
    return s
