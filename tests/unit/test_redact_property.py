"""Redaction works on the password as meant, whatever the URL's shape (property test over generated passwords).

A password in a database URL is either percent-encoded (then libpq, urllib and schemagate read it whole) or holds an
unencoded ``@``, ``/``, ``?`` or ``#``, which libpq would misread (connecting as someone else or to another host,
and quoting part of the password in its error). ``resolve_url`` refuses the second kind with a message that holds
no part of the password, and ``redact`` masks the password in either form wherever it appears.
"""

from __future__ import annotations

import string
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemagate.contract import dburl
from schemagate.contract import redact as redact_module
from schemagate.contract.errors import InvalidInput
from schemagate.contract.redact import MASK, redact

# every printable, non-space ASCII character but the mask's own '*'
ALPHABET = "".join(c for c in string.printable if not c.isspace() and c != "*")
passwords = st.text(alphabet=ALPHABET, min_size=4, max_size=24)


@contextmanager
def registered_secrets() -> Iterator[None]:
    """The process-wide set of registered secrets as it was before (generated passwords such as "7000" must not
    mask other tests' text)."""
    saved = set(redact_module._SECRETS)
    try:
        yield
    finally:
        redact_module._SECRETS.clear()
        redact_module._SECRETS.update(saved)


def _messages(url: str, password: str) -> list[str]:
    encoded = urllib.parse.quote(password, safe="")
    return [redact(f"could not connect to {url}: failed"), redact(f"password={password} PGPASSWORD={password}"),
            redact(f"dsn {url!r} / {password} / {encoded}")]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(password=passwords)
def test_an_encoded_password_is_read_whole_and_masked_everywhere(password: str) -> None:
    url = f"postgresql://app:{urllib.parse.quote(password, safe='')}@127.0.0.1:5432/shop"
    with registered_secrets():
        assert dburl.resolve_url(url) == url
        assert dburl.libpq_url_and_password(url)[1] == password
        for text in _messages(url, password):
            assert password not in text and MASK in text, text


@settings(max_examples=300, deadline=None)
@given(password=passwords)
def test_an_unencoded_password_is_refused_or_read_whole_and_never_leaks(password: str) -> None:
    url = f"postgresql://app:{password}@127.0.0.1:5432/shop"
    with registered_secrets():
        try:
            dburl.resolve_url(url)
        except InvalidInput as exc:
            assert any(c in password for c in "@/?#"), password
            assert password not in str(exc) and "percent-encode" in str(exc)
            for piece in filter(lambda p: len(p) >= 4, _pieces(password)):
                assert piece not in str(exc)
        else:
            assert not any(c in password for c in "@/?#"), password
        for text in _messages(url, password):
            assert password not in text, text


def _pieces(password: str) -> list[str]:
    out = [password]
    for sep in "@/?#:":
        out = [p for part in out for p in part.split(sep)]
    return out


@pytest.mark.parametrize("url", ["postgresql://app:Kc7/x9@y@127.0.0.1:5432/db", "postgresql://u:Canary9@@127.0.0.1/db",
                                 "postgresql://u:pa?ss@h/db", "postgresql://u:pa#ss@h/db"])
def test_the_audits_urls_are_refused_naming_the_field(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DB", url)
    with registered_secrets(), pytest.raises(InvalidInput) as e:
        dburl.resolve_url(None, "SHOP_DB")
    assert str(e.value).startswith("the database URL (environment variable SHOP_DB): the user or password holds")
    for piece in ("Kc7", "x9@y", "Canary9", "pa?ss", "pa#ss"):
        assert piece not in str(e.value)
