"""schemagate.contract: the one duration grammar, classifier, user-check parser and error tree (no database)."""

from __future__ import annotations

import ast
import itertools
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from schemagate.contract import durations, errors, names
from schemagate.contract.checks import UserCheck
from schemagate.contract.errors import (
    AuthenticationFailed,
    BackupCorrupt,
    BackupFailed,
    DatabaseUnreachable,
    InternalError,
    InvalidInput,
    LockTimeout,
    MigrationFailed,
    MultipleHeads,
    SchemagateError,
    ShadowUnavailable,
    StepBoundary,
    Transient,
    UnknownRevision,
    translate,
)
from schemagate.contract.sqlkind import StatementLog, classify
from schemagate.contract.stepresult import Outcome

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "operator" / "schemagate" / "contract"


def _crd_duration_patterns() -> set[str]:
    found = set()
    for crd in (ROOT / "manifests" / "crd.yaml", ROOT / "charts" / "schemagate" / "crds" /
                "databasemigrations.schemagate.dev.yaml"):
        doc = yaml.safe_load(crd.read_text())
        spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        found |= {spec["lockTimeout"]["pattern"], spec["statementTimeout"]["pattern"]}
    return found


def test_the_grammar_is_the_crds_pattern() -> None:
    assert _crd_duration_patterns() == {durations.PATTERN}


def _go_meaning_ms(text: str) -> Decimal:
    """What the CRD's grammar means (Go's time.ParseDuration, the Kubernetes convention), computed independently."""
    unit = {"h": Decimal(3_600_000), "m": Decimal(60_000), "s": Decimal(1000), "ms": Decimal(1)}
    total = Decimal(0)
    rest = text
    while rest:
        num = re.match(r"[0-9]+(\.[0-9]+)?", rest)
        assert num
        rest = rest[num.end():]
        u = "ms" if rest.startswith("ms") else rest[0]
        rest = rest[len(u):]
        total += Decimal(num.group()) * unit[u]
    return total


def _crd_values() -> list[str]:
    numbers = ["0", "1", "5", "30", "1.5", "0.25", "90"]
    units = ["ms", "s", "m", "h"]
    singles = [n + u for n, u in itertools.product(numbers, units)]
    pairs = [a + b for a, b in itertools.product(["1h", "2m", "1.5s", "0h"], ["30m", "30s", "500ms", "1m"])]
    return singles + pairs + ["1h2m3s4ms", "1m1m", "500ms1s"]


@pytest.mark.parametrize("text", _crd_values())
def test_every_value_the_crd_accepts_has_the_same_meaning(text: str) -> None:
    crd = re.compile(durations.PATTERN)
    assert crd.match(text), text
    d = durations.parse(text, "spec.lockTimeout")
    assert d.milliseconds == _go_meaning_ms(text)
    assert d.to_seconds() == pytest.approx(float(_go_meaning_ms(text)) / 1000)
    expected = 0 if d.milliseconds == 0 else max(1, int(_go_meaning_ms(text).to_integral_value("ROUND_HALF_UP")))
    assert d.to_postgres() == f"{expected}ms"


@pytest.mark.parametrize("text", ["", "5", "2min", "-1s", "5 minutes", "1d", "1.s", ".5s", "1S", "ms", "0.0.1s"])
def test_anything_else_is_invalid_input_naming_the_field(text: str) -> None:
    assert not re.match(durations.PATTERN, text) or text == "0"
    with pytest.raises(InvalidInput) as ei:
        durations.parse(text, "--lock-timeout")
    assert ei.value.field == "--lock-timeout" and repr(text) in str(ei.value)


def test_zero_and_limits() -> None:
    assert durations.parse("0").to_postgres() == "0ms" and durations.to_seconds("0") == 0
    assert durations.to_postgres(None) is None and durations.to_postgres("  ") is None
    assert durations.to_postgres("596h") == "2145600000ms"
    with pytest.raises(InvalidInput, match="maximum"):
        durations.to_postgres("600h", "spec.lockTimeout")


def test_one_classifier_for_both_paths() -> None:
    assert classify("UPDATE alembic_version SET version_num='0002'") == "other"
    assert classify("SELECT version_num FROM alembic_version") == "other"
    assert classify("SELECT customers.id, customers.name FROM customers ORDER BY customers.id") == "read"
    assert classify('SELECT x FROM "Orders" o JOIN public.items i ON i.id = o.item') == "read"
    assert classify("SELECT c.relname FROM pg_catalog.pg_class c") == "other"
    assert classify("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1") == "dml"
    assert classify("/* c */ INSERT INTO t VALUES (1)") == "dml"
    assert classify("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)") == "ddl"
    assert classify("SET lock_timeout = '5s'") == "other" and classify("") == "other"
    log = StatementLog(limit=2)
    log.on_revision("0002")
    for sql in ("SELECT 1", "UPDATE t SET a = 1", "SELECT a FROM t", "CREATE INDEX i ON t (a)"):
        log.add(sql)
    assert [(s["revision"], s["kind"]) for s in log.statements] == [("0002", "dml"), ("0002", "read")]
    assert log.dropped == 1 and log.dml_revisions == ["0002"]
    # the analysis layer and the injected runner use this very classifier
    from schemagate.analysis import capture
    from schemagate.runner.inject import capture as inject_capture

    assert capture.classify is classify and inject_capture.StatementLog is StatementLog


def test_user_checks_one_parser_one_rule_for_duplicates() -> None:
    a = UserCheck.parse("positive = SELECT count(*) FROM t WHERE a < 0;", "--check")
    assert (a.name, a.sql) == ("positive", "SELECT count(*) FROM t WHERE a < 0")
    assert UserCheck.parse({"name": "n", "sql": "SELECT 0", "table": "public.t"}).table == "public.t"
    assert UserCheck.parse(("n", "SELECT 0")) == UserCheck("n", "SELECT 0")
    with pytest.raises(InvalidInput, match="NAME=SQL"):
        UserCheck.parse("no equals sign", "--check")
    with pytest.raises(InvalidInput, match="'n' has no SQL"):
        UserCheck.parse({"name": "n", "sql": " "}, "spec.precheck.checks")
    with pytest.raises(InvalidInput, match="needs a name"):
        UserCheck.parse({"sql": "SELECT 0"})
    with pytest.raises(InvalidInput) as ei:
        UserCheck.parse_all(["a=SELECT 0", {"name": "a", "sql": "SELECT 1"}], "spec.verify.checks")
    assert "'a'" in str(ei.value) and ei.value.field == "spec.verify.checks a"


def test_the_error_tree() -> None:
    assert issubclass(UnknownRevision, InvalidInput) and issubclass(MultipleHeads, InvalidInput)
    assert issubclass(LockTimeout, Transient) and issubclass(DatabaseUnreachable, Transient)
    assert issubclass(BackupCorrupt, BackupFailed)
    for cls in (InvalidInput, MigrationFailed, BackupFailed, ShadowUnavailable, Transient, AuthenticationFailed,
                InternalError):
        assert issubclass(cls, SchemagateError)
    assert LockTimeout("x").outcome is Outcome.TRANSIENT_ERROR
    assert InvalidInput("x").outcome is Outcome.PERMANENT_ERROR and InvalidInput("x").actor.value == "user"
    assert DatabaseUnreachable("x").actor.value == "database" and InternalError("x").actor.value == "schemagate"
    # the docstring draws every class of the module's tree
    drawn = errors.__doc__ or ""
    classes = [n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, SchemagateError)]
    assert all(c in drawn for c in classes if c not in ("SchemagateError", "InternalError")), classes
    assert "postgresql://u:s3cretpw@h/db" not in str(InvalidInput("bad postgresql://u:s3cretpw@h/db"))


class _DriverError(Exception):
    def __init__(self, msg: str, sqlstate: str | None) -> None:
        super().__init__(msg)
        self.sqlstate = sqlstate


def test_translate_is_the_one_place_for_foreign_exceptions() -> None:
    # a stand-in for psycopg's exception type: the SQLSTATEs are PostgreSQL's (Appendix A)
    assert isinstance(translate(_DriverError("canceling statement due to lock timeout", "55P03")), LockTimeout)
    assert isinstance(translate(_DriverError("deadlock detected", "40P01")), LockTimeout)
    assert isinstance(translate(_DriverError('password authentication failed for user "u"', "28P01")),
                      AuthenticationFailed)
    gone = translate(_DriverError('database "nope" does not exist', "3D000"))
    assert isinstance(gone, DatabaseUnreachable) and gone.outcome is Outcome.PERMANENT_ERROR
    assert isinstance(translate(_DriverError("connection refused", "08006")), DatabaseUnreachable)
    # a client tool's stderr carries the server's words without the SQLSTATE (pg_dump cut by pg_terminate_backend)
    dump = translate(RuntimeError('pg_dump: error: Dumping the contents of table "big" failed: PQgetResult() '
                                  "failed.\npg_dump: detail: Error message from server: FATAL:  terminating "
                                  "connection due to administrator command"))
    assert isinstance(dump, DatabaseUnreachable) and dump.outcome.value == "TransientError"
    assert type(translate(RuntimeError("boom"))) is InternalError
    assert type(translate(RuntimeError("boom"), MigrationFailed)) is MigrationFailed
    same = InvalidInput("x")
    assert translate(same) is same


def test_step_boundary_turns_any_exception_into_the_finished_result() -> None:
    with StepBoundary("migrate", default=MigrationFailed, data={"applied": []}) as step:
        step.data["fromRevision"] = "0001"
        raise MigrationFailed("revision 0002 failed", revision="0002", statement="ALTER TABLE t",
                              current_revision="0001")
    r = step.result
    assert (r.step, r.outcome, r.reason) == ("migrate", Outcome.PERMANENT_ERROR, "MigrationFailed")
    assert r.data["fromRevision"] == "0001" and r.data["failedRevision"] == "0002"
    assert r.data["currentRevision"] == "0001" and r.data["actor"] == "user" and r.finished_at is not None
    with StepBoundary("backup", default=BackupFailed) as step:
        raise OSError("disk full")
    assert (step.result.reason, step.result.data["actor"]) == ("BackupFailed", "database")
    with StepBoundary("plan") as step:
        step.succeed("Planned", "ok")
    assert step.result.ok
    with pytest.raises(KeyboardInterrupt), StepBoundary("plan"):
        raise KeyboardInterrupt


def test_contract_imports_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    for f in CONTRACT.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for m in mods:
                top = m.split(".")[0]
                assert top in stdlib or m.startswith("schemagate.contract") or top == "__future__", (f.name, m)


def test_names_agree_with_the_crd() -> None:
    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    assert crd["spec"]["group"] == names.GROUP and crd["spec"]["names"]["plural"] == names.PLURAL
    assert crd["spec"]["names"]["kind"] == names.KIND and crd["spec"]["versions"][0]["name"] == names.VERSION
    phase = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    listed = set(re.findall(r"[A-Z][A-Za-z]+", phase["description"]))
    assert listed == {p.value for p in names.Phase}, listed
    assert crd["spec"]["names"]["singular"] == names.SINGULAR and crd["spec"]["names"]["shortNames"] == [names.SHORT_NAME]
