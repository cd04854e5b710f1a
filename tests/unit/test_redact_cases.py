"""Redaction masks real secrets only: the passwords of URLs, key/value and environment settings and registered
secrets, never a port of a URL without a password or a file path such as ``/etc/passwd``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from schemagate.contract import dburl
from schemagate.contract import redact as redact_module
from schemagate.contract.redact import MASK, redact


@pytest.fixture(autouse=True)
def _registered_secrets() -> Iterator[None]:
    """The process-wide set of registered secrets as it was before (what a test registers must not mask other
    tests' text)."""
    saved = set(redact_module._SECRETS)
    redact_module._SECRETS.clear()
    try:
        yield
    finally:
        redact_module._SECRETS.clear()
        redact_module._SECRETS.update(saved)


@pytest.mark.parametrize("url", [
    "postgresql://127.0.0.1:5432/app",
    "postgresql://db.example.com:5432/app?sslmode=require",
    "postgresql://app@127.0.0.1:5432/app",
    "postgresql://app:@127.0.0.1:5432/app",
])
def test_a_url_without_a_password_registers_nothing(url: str) -> None:
    assert dburl.resolve_url(url) == url
    assert dburl.credential_candidates(url) == []
    text = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    assert redact(text) == text
    assert redact(f"could not connect to {url}") == f"could not connect to {url}"


@pytest.mark.parametrize("text", [
    "/etc/passwd: File exists",
    "cannot read /etc/passwd: permission denied",
    "open ~/.pgpass.passwd: no such file",
    r"C:\config\passwd: missing",
    "pwd: /work/app",
    "password authentication failed for user \"app\"",
    "fe_sendauth: no password supplied",
    "port 5432 failed",
])
def test_text_that_holds_no_secret_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text, secret", [
    ("password=hunter22 host=db", "hunter22"),
    ("PGPASSWORD=hunter22", "hunter22"),
    ("export PGPASSWORD='hunter 22'", "hunter 22"),
    ('{"password": "hunter22"}', "hunter22"),
    ("password: hunter22", "hunter22"),
    ("passwd=hunter22", "hunter22"),
    ("Driver=x;PWD=hunter22;", "hunter22"),
    ("URL(password='hunter22')", "hunter22"),
    ("postgresql://app:hunter22@db:5432/app", "hunter22"),
    ("dsn=postgresql://app:hun/ter@22@db/app", "hun/ter@22"),
])
def test_real_secrets_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and MASK in out, out


def test_a_registered_password_is_masked_and_the_port_is_not() -> None:
    url = "postgresql://app:s3cret%2Fpw@127.0.0.1:5432/app"
    dburl.resolve_url(url)
    out = redact('password s3cret/pw or s3cret%2Fpw rejected by port 5432 of "127.0.0.1"')
    assert "s3cret" not in out and out.count(MASK) == 2 and "port 5432" in out, out
