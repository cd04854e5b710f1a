"""Bad input, class by class: every one gets a clear error naming the option, field, file or value, a non-zero
exit status, and changes nothing in the database (schema and version table compared before and after).

Exit status 2 is a usage error found while reading the command line (argparse), 4 a permanent error found by the
step (``InvalidInput``, ``UnknownRevision``, ``AuthenticationFailed``), both before anything was changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemagate import demo
from tests.pgfixtures import _admin_exec
from tests.pipeline.helpers import FOODTRUCK, ROOT, schema_snapshot, version

pytestmark = pytest.mark.postgres
SCHEMAGATE = str(Path(sys.executable).parent / "schemagate")
FT = str(FOODTRUCK)

# (id, arguments, expected exit status, text the error must contain); {tmp} is a directory of prepared files,
# {port} the test server's port
CASES = [
    ("keep-zero", ["run", "-c", FT, "--keep", "0"], 2, "--keep: 0 must be at least 1"),
    ("keep-negative", ["run", "-c", FT, "--keep", "-1"], 2, "--keep: -1 must be at least 1"),
    ("keep-not-int", ["run", "-c", FT, "--keep", "x"], 2, "--keep: 'x' is not an integer"),
    ("lock-timeout-word", ["migrate", "-c", FT, "--lock-timeout", "soon"], 2, "--lock-timeout: 'soon' is not a duration"),
    ("lock-timeout-unit", ["migrate", "-c", FT, "--lock-timeout", "1y"], 2, "--lock-timeout: '1y' is not a duration"),
    ("statement-timeout", ["migrate", "-c", FT, "--statement-timeout", "5 parsecs"], 2,
     "--statement-timeout: '5 parsecs' is not a duration"),
    ("check-no-equals", ["run", "-c", FT, "--check", "novalue"], 2, "--check: 'novalue' is not NAME=SQL"),
    ("check-no-name", ["run", "-c", FT, "--check", "=select 1"], 2, "--check: a user check needs a name"),
    ("check-no-sql", ["run", "-c", FT, "--check", "a="], 2, "--check: user check 'a' has no SQL"),
    ("check-ddl", ["run", "-c", FT, "--check", "a=drop table menu_items"], 2,
     "--check: user check 'a' is not a single read-only SELECT"),
    ("check-two-statements", ["run", "-c", FT, "--check", "a=select 1; select 2"], 2, "2 statements"),
    ("check-escape", ["precheck", "-c", FT, "--check", "a=SELECT 0; COMMIT; DROP TABLE menu_items; SELECT 0"], 2,
     "user check 'a' is not a single read-only SELECT"),
    ("check-unterminated", ["run", "-c", FT, "--check", "a=select 'oops"], 2, "unterminated string"),
    ("check-duplicate", ["run", "-c", FT, "--check", "a=select 1", "--check", "a=select 2"], 4,
     "two user checks are named 'a'"),
    ("max-violations-negative", ["run", "-c", FT, "--max-violations", "-3"], 2, "--max-violations: -3 must be at least 0"),
    ("max-violations-not-int", ["run", "-c", FT, "--max-violations", "x"], 2, "--max-violations: 'x' is not an integer"),
    ("retries-word", ["migrate", "-c", FT, "--retries", "many"], 2, "--retries: 'many' is not an integer"),
    ("retries-negative", ["migrate", "-c", FT, "--retries", "-1"], 2, "--retries: -1 must be at least 0"),
    ("target-unknown", ["migrate", "-c", FT, "--target", "abc123"], 4, "unknown target revision 'abc123'"),
    ("target-bad-branch", ["migrate", "-c", FT, "--target", "head@@"], 4, "unknown target revision 'head@@'"),
    ("target-unknown-label", ["migrate", "-c", FT, "--target", "nolabel@head"], 4, "unknown target revision 'nolabel@head'"),
    ("target-empty", ["migrate", "-c", FT, "--target", ""], 2, "--target: an empty value is not allowed"),
    ("config-missing", ["migrate", "-c", "{tmp}/missing.ini"], 4, "missing.ini' not found"),
    ("config-garbage", ["migrate", "-c", "{tmp}/garbage.ini"], 4, "garbage.ini' is not a valid Alembic configuration"),
    ("config-no-script-location", ["migrate", "-c", "{tmp}/noloc.ini"], 4, "noloc.ini' has no script_location"),
    ("config-script-dir-missing", ["migrate", "-c", "{tmp}/noscript.ini"], 4, "/nonexistent/dir"),
    ("config-package-missing", ["migrate", "-c", "{tmp}/pkg.ini"], 4, "package 'nosuchpkg.sub' cannot be imported"),
    ("config-directory-without-env", ["migrate", "-c", "{tmp}"], 4,
     "is neither an Alembic configuration file nor a directory holding env.py"),
    ("url-variable-unset", ["migrate", "-c", FT, "--database-url-env", "NO_SUCH_VAR"], 4,
     "the environment variable NO_SUCH_VAR is not set"),
    ("url-scheme", ["migrate", "-c", FT, "--database-url", "mysql://u:p@h/db"], 4, "unsupported scheme 'mysql'"),
    ("url-not-a-url", ["migrate", "-c", FT, "--database-url", "not a url"], 4, "unsupported scheme ''"),
    ("url-unencoded-password", ["migrate", "-c", FT, "--database-url", "postgresql://u:a/b@c@127.0.0.1:1/x"], 4,
     "percent-encode"),
    ("url-port", ["migrate", "-c", FT, "--database-url", "postgresql://u:p@127.0.0.1:99999/x"], 4,
     'invalid port number'),
    ("url-sslmode", ["migrate", "-c", FT, "--database-url", "postgresql://u:p@127.0.0.1:{port}/x?sslmode=sometimes"],
     4, 'invalid sslmode value'),
    ("url-wrong-password", ["migrate", "-c", FT, "--database-url", "postgresql://nobody:wrong@127.0.0.1:{port}/x"], 4,
     'password authentication failed for user'),
    ("data-shadow-size", ["run", "-c", FT, "--data-shadow-max-size", "lots"], 2, "--data-shadow-max-size: 'lots' is not a size"),
    ("data-shadow-negative", ["run", "-c", FT, "--data-shadow-max-size", "-1"], 2, "--data-shadow-max-size: '-1' is not a size"),
    ("accept-unevaluated-empty", ["run", "-c", FT, "--accept-unevaluated", ""], 2,
     "--accept-unevaluated: an empty value is not allowed"),
    ("backup-dir", ["run", "-c", FT, "--backup-dir", "/proc/forbidden"], 4, "--backup-dir: cannot create /proc/forbidden"),
    ("backup-jobs-zero", ["backup", "--jobs", "0"], 2, "--jobs: 0 must be at least 1"),
    ("backup-jobs-word", ["backup", "--jobs", "x"], 2, "--jobs: 'x' is not an integer"),
    ("backup-compress-method", ["backup", "--compress", "brotli:99"], 4, "--compress: 'brotli:99' is not a pg_dump compression"),
    ("backup-compress-level", ["backup", "--compress", "gzip:99"], 4, "--compress: 'gzip:99' is refused by pg_dump"),
    ("lint-fail", ["precheck", "-c", FT, "--lint-fail", "sometimes"], 2, "--lint-fail: invalid choice: 'sometimes'"),
    ("plan-env-unset", ["verify", "-c", FT, "--plan-env", "NO_PLAN"], 4, "--plan-env: the environment variable NO_PLAN"),
    ("plan-env-not-json", ["verify", "-c", FT, "--plan-env", "BAD_PLAN"], 4, "--plan-env BAD_PLAN: not JSON"),
    ("termination-log", ["run", "-c", FT, "--termination-log", "/proc/x/y"], 2, "--termination-log: cannot write"),
    ("shadow-url-unset", ["precheck", "-c", FT, "--shadow-database-url-env", "NO_SUCH"], 4,
     "the environment variable NO_SUCH is not set"),
]


@pytest.fixture(scope="module")
def seeded(pg_server: str) -> Iterator[str]:
    """One database at the food truck's 0001 with its data, shared by every case (each must leave it as it was)."""
    from schemagate.contract.dburl import with_database

    name = "sgbad_" + uuid.uuid4().hex[:10]
    _admin_exec(pg_server, f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    demo.seed_foodtruck(url)
    yield url
    _admin_exec(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.ini").write_text("this is [not an ini\n")
    (d / "noloc.ini").write_text("[alembic]\nsqlalchemy.url = x\n")
    (d / "noscript.ini").write_text("[alembic]\nscript_location = /nonexistent/dir\n")
    (d / "pkg.ini").write_text("[alembic]\nscript_location = nosuchpkg.sub:migrations\n")
    return d


def test_there_are_at_least_forty_classes() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "status", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_it_and_changes_nothing(seeded: str, files: Path, args: list[str], status: int,
                                                            needle: str, tmp_path: Path) -> None:  # fmt: skip
    from urllib.parse import urlsplit

    port = str(urlsplit(seeded).port)
    argv = [a.replace("{tmp}", str(files)).replace("{port}", port) for a in args]
    if argv[0] == "backup" and "--backup-dir" not in argv:
        argv += ["--backup-dir", str(tmp_path / "b")]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SCHEMAGATE_TERMINATION_LOG")}
    env.update({"DATABASE_URL": seeded, "BAD_PLAN": "not json", "SCHEMAGATE_NO_EMBEDDED": "1"})
    before = (schema_snapshot(seeded), version(seeded))
    p = subprocess.run([SCHEMAGATE, *argv, "--json"], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(ROOT))  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == status, out
    assert needle in out, out
    assert "Traceback" not in out and "a bug, please report" not in out
    assert (schema_snapshot(seeded), version(seeded)) == before
    assert version(seeded) == "0001"
    if argv[0] == "backup":
        assert not list((tmp_path / "b").glob("*")) if (tmp_path / "b").exists() else True
