"""contract.redact, contract.dburl, contract.errors.translate, schemagate.libpq, the embedded server, the fixtures."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from schemagate.contract.dburl import (
    database_name,
    libpq_url,
    libpq_url_and_password,
    resolve_url,
    sqlalchemy_url,
    with_database,
)
from schemagate.contract.errors import (
    InternalError,
    InvalidInput,
    MigrationFailed,
    SchemagateError,
    translate,
)
from schemagate.contract.redact import redact, register_secret
from schemagate.contract.stepresult import Outcome
from schemagate.libpq import embedded_bin_dir, pg_bin
from schemagate.local.postgres import free_port


def classify(exc: BaseException, default: type[SchemagateError] = InternalError) -> tuple[Outcome, str, str]:
    err = translate(exc, default)
    return err.outcome, err.reason, err.message


def test_fresh_db_is_a_real_empty_database(fresh_db: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(fresh_db), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("select current_database()")) == database_name(fresh_db)
        assert conn.scalar(sa.text("select count(*) from pg_tables where schemaname='public'")) == 0
        version = conn.scalar(sa.text("show server_version_num"))
    engine.dispose()
    assert int(version) >= 120000


def test_redact_masks_urls_and_key_values() -> None:
    text = (
        "connect postgresql+psycopg://app:s3cr%40t@db:5432/x failed; dsn host=db password=hunter22 user=app; "
        "PGPASSWORD=abc123 and URL('postgresql://u:p@h/d') password='zzz'"
    )
    out = redact(text)
    for secret in ("s3cr%40t", "hunter22", "abc123", ":p@", "zzz"):
        assert secret not in out, out
    assert "app:***@db:5432" in out
    assert "postgresql://u@h" not in out  # user kept, password masked
    register_secret("correct-horse")
    assert "correct-horse" not in redact("oops correct-horse leaked")


def test_urls() -> None:
    assert sqlalchemy_url("postgres://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert sqlalchemy_url("postgresql+psycopg2://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert libpq_url("postgresql+psycopg://u:p@h/d") == "postgresql://u:p@h/d"
    url, pw = libpq_url_and_password("postgresql+psycopg://u:p%40ss@h:5/d?sslmode=disable")
    assert url == "postgresql://u@h:5/d?sslmode=disable" and pw == "p@ss"


def test_resolve_url(monkeypatch) -> None:
    monkeypatch.delenv("SG_MISSING", raising=False)
    try:
        resolve_url(None, "SG_MISSING")
    except InvalidInput as e:
        assert "SG_MISSING" in str(e)
    else:
        raise AssertionError("expected InvalidInput")
    monkeypatch.setenv("SG_URL", "postgresql://u:topsecret1@h/d")
    assert resolve_url(None, "SG_URL").endswith("@h/d")
    assert "topsecret1" not in redact("x topsecret1 y")


def _connect_error(url: str) -> BaseException:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool,
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except Exception as e:  # noqa: BLE001
        return e
    finally:
        engine.dispose()
    raise AssertionError("connection unexpectedly succeeded")


def test_classify_real_errors(fresh_db: str) -> None:
    port = free_port()
    out, reason, msg = classify(_connect_error(f"postgresql://u:pw12345@127.0.0.1:{port}/x"))
    assert (out, reason) == (Outcome.TRANSIENT_ERROR, "DatabaseUnreachable"), msg
    assert "pw12345" not in msg

    bad = fresh_db.replace("@", "x@", 0)
    import urllib.parse

    u = urllib.parse.urlsplit(fresh_db)
    bad = fresh_db.replace(f":{u.password}@", ":WrongPassw0rd@")
    out, reason, msg = classify(_connect_error(bad))
    assert (out, reason) == (Outcome.PERMANENT_ERROR, "AuthenticationFailed"), msg
    assert "WrongPassw0rd" not in msg

    out, reason, msg = classify(_connect_error(with_database(fresh_db, "no_such_db_xyz")))
    assert (out, reason) == (Outcome.PERMANENT_ERROR, "DatabaseUnreachable"), msg
    assert "no_such_db_xyz" in msg

    engine = sa.create_engine(sqlalchemy_url(fresh_db), poolclass=sa.pool.NullPool)
    with engine.connect() as a:
        a.exec_driver_sql("create table t (x int)")
        a.commit()
        a.exec_driver_sql("lock table t in access exclusive mode")
        with engine.connect() as b:
            b.exec_driver_sql("set lock_timeout = '100ms'")
            try:
                b.exec_driver_sql("select * from t")
            except Exception as e:  # noqa: BLE001
                out, reason, msg = classify(e)
            else:
                raise AssertionError("no lock timeout")
        a.rollback()
    engine.dispose()
    assert (out, reason) == (Outcome.TRANSIENT_ERROR, "LockTimeout"), msg
    out, reason, msg = classify(RuntimeError("boom"), MigrationFailed)
    assert (out, reason) == (Outcome.PERMANENT_ERROR, "MigrationFailed")


def test_pg_bin_prefers_embedded() -> None:
    path = pg_bin("pg_dump")
    assert "pginstall" in path or embedded_bin_dir() is None


def test_redact_json_and_no_false_positive() -> None:
    out = redact('{"password": "j50n-secret"} all checks pass: 3')
    assert "j50n-secret" not in out and "pass: 3" in out


def test_client_env_keeps_the_password_out_of_the_command_line() -> None:
    from schemagate.libpq import client_env

    base = {"PGOPTIONS": "-c lock_timeout=1ms", "PATH": "/usr/bin"}
    c = client_env("postgresql+psycopg://app:s3cr%40t-pw@db.example:6543/shop?sslmode=require", base=base)
    assert c.conninfo == "postgresql://app@db.example:6543/shop?sslmode=require"
    assert c.env["PGPASSWORD"] == "s3cr@t-pw" and "PGOPTIONS" not in c.env and c.env["PGCONNECT_TIMEOUT"] == "15"
    assert "s3cr" not in redact(f"pg_dump --dbname {c.conninfo} PGPASSWORD={c.env['PGPASSWORD']}")
    parts = client_env(host="db.example", port=5433, user="app", password="pw-from-secret", dbname="my db",
                       application_name="schemagate-backup", base=base)
    assert parts.conninfo == "postgresql://app@db.example:5433/my%20db"
    assert parts.env["PGPASSWORD"] == "pw-from-secret" and parts.env["PGAPPNAME"] == "schemagate-backup"
    # no password given: an inherited PGPASSWORD (the Job's, from the Secret) stays for libpq
    inherited = client_env("postgresql://app@db.example/shop", base={"PGPASSWORD": "from-secret"})
    assert inherited.env["PGPASSWORD"] == "from-secret" and "from-secret" not in inherited.conninfo
    with pytest.raises(InvalidInput):
        client_env()
