"""Job builders, status/condition builders, the model, and the CRD schema (no cluster)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from schemagate.core import jobs as J
from schemagate.core import status as S
from schemagate.core.model import Migration, parse_duration, spec_hash, url_identity
from tests.unit.helpers import T0, body, mig

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = J.JobSettings(runner_image="ghcr.io/schemagate/schemagate:0.1.0")
HOST_DB = {"host": "pg.db.svc", "port": 5433, "name": "shop", "user": "app", "sslMode": "require",
           "passwordFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}}
URL_DB = {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
STEPS = ("backup", "precheck", "migrate", "verify")
PLAN = {"targetRevision": "0002", "pending": ["0002"], "checks": [{"name": "c"}], "indexes": []}


def all_jobs(db):
    m = mig(database=db, precheck={"checks": [{"name": "neg", "sql": "select count(*) from t where x < 0"}]},
            verify={"checks": [{"name": "v", "sql": "select 0"}]},
            jobTemplate={"serviceAccountName": "shop-migrator", "nodeSelector": {"pool": "db"},
                         "tolerations": [{"key": "k", "operator": "Exists"}], "imagePullSecrets": [{"name": "reg"}],
                         "resources": {"limits": {"memory": "256Mi"}}, "activeDeadlineSeconds": 900})
    return m, [J.build_job(m, s, J.job_name(m.name, 1, s, 1), 1, SETTINGS, PLAN) for s in STEPS]


# ---------------------------------------------------------------------------------------------------------------
# names


def test_job_names_are_deterministic_and_short():
    assert J.job_name("shop", 3, "precheck", 2) == "shop-3-precheck-2"
    long = "a" * 200
    n1, n2 = J.job_name(long, 12, "precheck", 7), J.job_name(long, 12, "precheck", 7)
    assert n1 == n2 and len(n1) <= 63 and n1.endswith("-12-precheck-7-" + n1.split("-")[-1])
    assert J.job_name(long, 12, "precheck", 8) != n1
    assert J.job_name("b" + "a" * 199, 12, "precheck", 7) != n1
    for name in ("x", "a" * 50, "a" * 63, "a.b-c" * 40, "n" * 253):
        for step in STEPS:
            jn = J.job_name(name, 123456, step, 99)
            assert len(jn) <= 63 and re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", jn), jn


def test_label_values_are_valid():
    assert J.label_value("shop") == "shop"
    v = J.label_value("x" * 100)
    assert len(v) <= 63 and re.match(r"^[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]$", v)


# ---------------------------------------------------------------------------------------------------------------
# the Job manifests


@pytest.mark.parametrize("db", [URL_DB, HOST_DB])
def test_jobs_are_owned_limited_and_labelled(db):
    m, jobs = all_jobs(db)
    for step, job in zip(STEPS, jobs, strict=True):
        md = job["metadata"]
        assert md["namespace"] == "team" and len(md["name"]) <= 63
        (ref,) = md["ownerReferences"]
        assert ref == {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "name": "shop",
                       "uid": "uid-1234", "controller": True, "blockOwnerDeletion": True}
        assert md["labels"][J.LABEL_UID] == "uid-1234" and md["labels"][J.LABEL_STEP] == step
        assert md["labels"][J.LABEL_GENERATION] == "1" and md["labels"][J.LABEL_COUNTER] == "1"
        spec = job["spec"]
        assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 900
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "shop-migrator"
        assert pod["nodeSelector"] == {"pool": "db"} and pod["imagePullSecrets"] == [{"name": "reg"}]
        assert pod["tolerations"] == [{"key": "k", "operator": "Exists"}]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["terminationMessagePath"] == "/dev/termination-log"
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"] == {"limits": {"memory": "256Mi"}}
            mounts = {v["name"] for v in c["volumeMounts"]}
            assert mounts <= {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize("db", [URL_DB, HOST_DB])
def test_every_container_passes_pod_security_restricted(db):
    """Pod Security Standards, restricted profile (kubernetes.io/docs/concepts/security/pod-security-standards):
    non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault; plus a read-only root
    filesystem with a writable emptyDir /tmp for every container that runs the application's image."""
    m, jobs = all_jobs(db)
    for step, job in zip(STEPS, jobs, strict=True):
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, (step, c["name"])
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc.get("runAsUser", 10001) != 0
            if c["image"] == m.migrations.image:
                assert sc["runAsUser"] == 10001, (step, c["name"])
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], (step, c["name"])
                assert {"name": "HOME", "value": "/tmp"} in c["env"]
        mounted = {v["name"] for c in pod.get("initContainers", []) + pod["containers"] for v in c["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["volumes"]}


def test_run_as_user_reaches_the_application_containers():
    m = mig(jobTemplate={"runAsUser": 4242})
    job = J.build_job(m, "migrate", "shop-migrate", 1, SETTINGS)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["runAsUser"] == 4242
    (init,) = job["spec"]["template"]["spec"]["initContainers"]
    assert "runAsUser" not in init["securityContext"]  # the operator image runs as its own uid 10001


def test_container_layouts_follow_the_architecture():
    m, (backup, precheck, migrate, verify) = all_jobs(URL_DB)
    app, op = m.migrations.image, SETTINGS.runner_image

    def layout(job):
        p = job["spec"]["template"]["spec"]
        return [(c["name"], c["image"]) for c in p.get("initContainers", [])], \
               [(c["name"], c["image"]) for c in p["containers"]]

    assert layout(backup) == ([], [("backup", op)])
    assert layout(precheck) == ([("install-runner", op), ("shadow-server", op), ("prepare", op),
                                 ("shadow-upgrade", app), ("data-prepare", op), ("data-upgrade", app)],
                                [("count", op)])
    assert layout(migrate) == ([("install-runner", op)], [("migrate", app)])
    assert layout(verify) == ([], [("verify", op)])
    pre = precheck["spec"]["template"]["spec"]
    assert pre["initContainers"][0]["command"] == ["schemagate", "install-runner", "/schemagate"]
    assert pre["initContainers"][1]["command"][:4] == ["schemagate", "precheck", "--phase", "shadow-server"]
    assert pre["initContainers"][2]["command"][:4] == ["schemagate", "precheck", "--phase", "prepare"]
    sh = pre["initContainers"][3]
    assert sh["command"][:4] == ["python", "-m", "schemagate.runner.inject", "shadow-upgrade"]
    assert {"name": "PYTHONPATH", "value": "/schemagate"} in sh["env"]
    dp, du = pre["initContainers"][4], pre["initContainers"][5]
    assert dp["command"][:4] == ["schemagate", "precheck", "--phase", "data-prepare"]
    assert dp["command"][dp["command"].index("--data-shadow-max-size") + 1] == m.precheck.data_shadow_max_size
    assert du["command"][:4] == ["python", "-m", "schemagate.runner.inject", "data-upgrade"]
    assert du["command"][du["command"].index("-c") + 1] == sh["command"][sh["command"].index("-c") + 1]
    assert {"name": "PYTHONPATH", "value": "/schemagate"} in du["env"]
    assert pre["containers"][0]["command"][:4] == ["schemagate", "precheck", "--phase", "count"]
    mc = migrate["spec"]["template"]["spec"]["containers"][0]
    assert mc["command"][:4] == ["python", "-m", "schemagate.runner.inject", "migrate"]
    assert mc["command"][mc["command"].index("--target") + 1] == "0002"  # the resolved target, not "head"
    assert mc["command"][mc["command"].index("-c") + 1] == "/app/alembic.ini"
    vc = verify["spec"]["template"]["spec"]["containers"][0]
    plan = json.loads(next(e["value"] for e in vc["env"] if e["name"] == "SCHEMAGATE_PLAN"))
    assert plan["targetRevision"] == "0002"
    assert "--plan-env" in vc["command"] and vc["command"][-2:] == ["--check", "v=select 0"]
    cc = pre["containers"][0]["command"]
    assert cc[cc.index("--check") + 1] == "neg=select count(*) from t where x < 0"
    bc = backup["spec"]["template"]["spec"]["containers"][0]["command"]
    assert bc[bc.index("--backup-dir") + 1] == "/backups" and bc[bc.index("--keep") + 1] == "5"
    bvol = next(v for v in backup["spec"]["template"]["spec"]["volumes"] if v["name"] == "backups")
    assert bvol == {"name": "backups", "persistentVolumeClaim": {"claimName": "backups"}}
    # a fresh volume (root:root 0755) becomes writable by the operator image's group; only the backup pod has one
    assert backup["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == J.RUNNER_GID == 10001
    assert all("fsGroup" not in j["spec"]["template"]["spec"]["securityContext"] for j in (precheck, migrate, verify))


def test_backup_jobs_and_compression_reach_the_backup_command():
    pvc = {"persistentVolumeClaim": {"claimName": "backups"}}

    def command(backup):
        m = mig(backup=backup)
        job = J.build_job(m, "backup", J.job_name(m.name, 1, "backup", 1), 1, SETTINGS, PLAN)
        return job["spec"]["template"]["spec"]["containers"][0]["command"]

    plain = command({"volume": pvc})
    assert "--jobs" not in plain and "--compress" not in plain  # the runner's defaults: custom format, gzip:1
    assert "--jobs" not in command({"volume": pvc, "jobs": 1})
    c = command({"volume": pvc, "jobs": 4, "compression": "zstd:3"})
    assert c[c.index("--jobs") + 1] == "4" and c[c.index("--compress") + 1] == "zstd:3"
    crd_backup = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "backup"]["properties"]
    assert crd_backup["jobs"]["minimum"] == 1 and crd_backup["jobs"]["default"] == 1
    pattern = re.compile(crd_backup["compression"]["pattern"])
    assert all(pattern.match(v) for v in ("gzip:1", "zstd:19", "lz4", "none", "6"))
    assert not any(pattern.match(v) for v in ("brotli", "gzip:", "zstd:3; rm -rf /", "gzip:100"))


def test_every_container_refuses_an_embedded_database():
    _, jobs = all_jobs(URL_DB)
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert {"name": "SCHEMAGATE_NO_EMBEDDED", "value": "1"} in c["env"], (job["metadata"]["name"], c["name"])


def test_derivation_off_is_passed_to_the_count_phase():
    on = J.build_job(mig(), "precheck", "n", 1, SETTINGS, None)
    off = J.build_job(mig(precheck={"derive": False}), "precheck", "n", 1, SETTINGS, None)
    assert "--no-derive" not in on["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--no-derive" in off["spec"]["template"]["spec"]["containers"][0]["command"]


def test_derive_false_creates_no_shadow():
    """derive: false renders one container counting the user checks: no sidecar, no prepare, no shadow-upgrade."""
    off = J.build_job(mig(precheck={"derive": False, "checks": [{"name": "neg", "sql": "select 0"}]}),
                      "precheck", "n", 1, SETTINGS, None)["spec"]["template"]["spec"]
    assert "initContainers" not in off
    assert [c["name"] for c in off["containers"]] == ["count"]
    assert [v["name"] for v in off["volumes"]] == ["tmp"]
    cmd = off["containers"][0]["command"]
    assert "--workdir" not in cmd and cmd[cmd.index("--check") + 1] == "neg=select 0"


def test_default_shadow_is_a_sidecar_server_in_memory():
    pod = J.build_job(mig(precheck={"shadowDatabase": {"sizeLimit": "512Mi"}}), "precheck", "n", 1, SETTINGS,
                      None)["spec"]["template"]["spec"]
    server = next(c for c in pod["initContainers"] if c["name"] == "shadow-server")
    assert server["restartPolicy"] == "Always"
    assert {"name": "SCHEMAGATE_SHADOW_DIR", "value": "/shadow"} in server["env"]
    assert not any(e["name"] == "DATABASE_URL" for e in server["env"])  # it never needs the real database
    assert {"name": "shadow", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}} in pod["volumes"]
    assert [c["name"] for c in pod["initContainers"]].index("shadow-server") < \
        [c["name"] for c in pod["initContainers"]].index("prepare")


def test_explicit_shadow_database_from_a_secret():
    ref = {"urlFrom": {"secretKeyRef": {"name": "shadow", "key": "url"}}}
    pod = J.build_job(mig(precheck={"shadowDatabase": ref}), "precheck", "n", 1, SETTINGS,
                      None)["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["initContainers"]]
    assert "shadow-server" not in names and not any(v["name"] == "shadow" for v in pod["volumes"])
    env = {"name": "SCHEMAGATE_SHADOW_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "shadow", "key": "url"}}}
    for c in pod["initContainers"][1:] + pod["containers"]:
        assert env in c["env"], c["name"]
    prep = next(c for c in pod["initContainers"] if c["name"] == "prepare")["command"]
    assert prep[prep.index("--shadow-database-url-env") + 1] == "SCHEMAGATE_SHADOW_DATABASE_URL"


def test_command_override():
    m = mig(migrations={"image": "app:1", "command": ["/bin/migrate", "up"]})
    job = J.build_job(m, "migrate", "n", 1, SETTINGS, None)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["/bin/migrate", "up"]


_CRED = re.compile(r"://[^/\s@]*:[^/\s@]*@")


@pytest.mark.parametrize("db", [URL_DB, HOST_DB])
def test_credentials_only_via_secret_key_ref(db):
    m, jobs = all_jobs(db)
    for job in jobs:
        text = json.dumps(job)
        assert not _CRED.search(text), "a URL with a password was rendered"
        assert "hunter2" not in text
        for c in job["spec"]["template"]["spec"].get("initContainers", []) + job["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c["env"]}
            if c["name"] in ("install-runner", "shadow-server"):  # neither ever connects to the real database
                assert "DATABASE_URL" not in env and "PGPASSWORD" not in env
                continue
            url = env["DATABASE_URL"]
            if "urlFrom" in db:
                assert url["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "url"}} and "value" not in url
            else:
                assert env["PGPASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "password"}}
                assert url["value"] == "postgresql://$(PGUSER)@$(PGHOST):$(PGPORT)/$(PGDATABASE)?sslmode=$(PGSSLMODE)"
                names = list(env)
                assert names.index("PGPASSWORD") < names.index("DATABASE_URL")
            for e in c["env"]:
                if "PASS" in e["name"].upper():
                    assert "value" not in e


def test_custom_url_env_name():
    m = mig(migrations={"image": "a:1", "databaseUrlEnv": "SQLALCHEMY_URL"})
    job = J.build_job(m, "migrate", "n", 1, SETTINGS, None)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert any(e["name"] == "SQLALCHEMY_URL" for e in c["env"])
    assert c["command"][c["command"].index("--database-url-env") + 1] == "SQLALCHEMY_URL"


# ---------------------------------------------------------------------------------------------------------------
# status helpers and model


@pytest.mark.parametrize("phase,ready,rec,stalled", [
    ("Succeeded", "True", "False", "False"), ("Blocked", "False", "False", "True"),
    ("Failed", "False", "False", "True"), ("Suspended", "False", "False", "False"),
    ("Pending", "False", "True", "False"), ("BackingUp", "False", "True", "False"),
    ("Prechecking", "False", "True", "False"), ("Migrating", "False", "True", "False"),
    ("Verifying", "False", "True", "False")])
def test_conditions(phase, ready, rec, stalled):
    cs = {c["type"]: c for c in S.build_conditions(phase, "R", "m", 4, None, T0)}
    assert (cs["Ready"]["status"], cs["Reconciling"]["status"], cs["Stalled"]["status"]) == (ready, rec, stalled)
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == "2025-01-01T12:00:00Z"
               for c in cs.values())


def test_transition_time_kept_while_status_unchanged():
    c1 = S.build_conditions("BackingUp", "Progressing", "a", 1, None, T0)
    later = T0 + dt.timedelta(minutes=5)
    c2 = {c["type"]: c for c in S.build_conditions("Prechecking", "Progressing", "b", 1, c1, later)}
    assert c2["Ready"]["lastTransitionTime"] == "2025-01-01T12:00:00Z"
    c3 = {c["type"]: c for c in S.build_conditions("Succeeded", "Succeeded", "c", 1, list(c2.values()), later)}
    assert c3["Ready"]["lastTransitionTime"] == "2025-01-01T12:05:00Z"


def test_merge_patch():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1], "kopf": {"x": 1}, "gone": 5}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "l": [1, 2], "kopf": {"x": 1}, "n": None}
    assert S.merge_patch(old, new) == {"b": {"d": 4}, "l": [1, 2], "gone": None}
    assert S.merge_patch(new, new) is None
    assert S.merge_patch({}, {"x": {"y": 1}}) == {"x": {"y": 1}}
    assert S.merge_patch({"x": 1}, {"x": None}) == {"x": None}


def test_is_ready_requires_current_generation():
    b = body(generation=2)
    b["status"] = {"phase": "Succeeded", "observedGeneration": 1,
                   "conditions": S.build_conditions("Succeeded", "Succeeded", "", 1, None, T0)}
    assert not S.is_ready(b)
    b["status"]["observedGeneration"] = 2
    assert S.is_ready(b)


def test_model_parsing_and_identity():
    m = Migration.from_body(body(database=HOST_DB, lockTimeout="1m30s"))
    assert m.database.identity() == "pg.db.svc:5433/shop"
    assert parse_duration(m.lock_timeout) == 90 and parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
    assert url_identity("postgresql+psycopg://u:secret@PG.example:6543/shop?sslmode=require") == "pg.example:6543/shop"
    assert "secret" not in (url_identity("postgresql://u:secret@h/db") or "")
    assert mig().database.identity() == "secret:db/url"
    assert mig().database.identity("postgresql://u:p@h:5432/d") == "h:5432/d"
    assert spec_hash({"a": 1, "suspend": True}) == spec_hash({"a": 1}) != spec_hash({"a": 2})
    assert mig(backup={"enabled": False}).steps() == ("precheck", "migrate", "verify")
    pvc = {"persistentVolumeClaim": {"claimName": "backups"}}
    assert mig(backup={"volume": pvc}).steps() == ("backup", "precheck", "migrate", "verify"), "a volume turns it on"
    assert mig(backup={"volume": pvc, "enabled": False}).steps()[0] == "precheck"
    assert mig(backup={}).steps()[0] == "precheck"


# ---------------------------------------------------------------------------------------------------------------
# CRD


def _crd():
    return yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())


def _walk(schema, path):
    yield path, schema
    for k, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{k}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_crd_identity():
    crd = _crd()
    assert crd["metadata"]["name"] == "databasemigrations.schemagate.dev"
    s = crd["spec"]
    assert s["group"] == "schemagate.dev" and s["scope"] == "Namespaced"
    assert s["names"]["kind"] == "DatabaseMigration" and s["names"]["shortNames"] == ["dbm"]
    (v,) = s["versions"]
    assert v["name"] == "v1alpha1" and v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == ["Phase", "Target", "Current", "Violations",
                                                                   "Ready", "Age", "Reason", "Message"]
    # `kubectl get -o wide` adds the Ready condition's reason and message (priority 1)
    assert [c.get("priority", 0) for c in v["additionalPrinterColumns"]] == [0, 0, 0, 0, 0, 0, 1, 1]


def test_every_crd_property_has_a_description():
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for p, sch in _walk(root, "") if p not in ("", ".metadata") and not sch.get("description")
               and not p.endswith("[]")]
    assert missing == []


def test_crd_spec_fields_cover_the_model():
    spec = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for k in ("database", "migrations", "backup", "precheck", "verify", "lockTimeout", "statementTimeout",
              "jobTemplate", "suspend"):
        assert k in spec
    for k in ("serviceAccountName", "resources", "nodeSelector", "tolerations", "imagePullSecrets",
              "activeDeadlineSeconds", "backoffLimit"):
        assert k in spec["jobTemplate"]["properties"]
    assert spec["migrations"]["required"] == ["image"]


def test_crd_patterns():
    spec = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    rev = re.compile(spec["migrations"]["properties"]["targetRevision"]["pattern"])
    for ok in ("head", "0002", "ae1027a6acf", "heads"):
        assert rev.match(ok)
    for bad in ("", "head; drop", "../x", "a" * 40, "-1"):
        assert not rev.match(bad)
    dur = re.compile(spec["lockTimeout"]["pattern"])
    assert dur.match("5s") and dur.match("1m30s") and dur.match("500ms") and not dur.match("5") \
        and not dur.match("-1s") and not dur.match("five")


# ---------------------------------------------------------------------------------------------------------------
# a step that cannot start


def _pod(reason: str, message: str = "", init: bool = False) -> dict:
    statuses = [{"name": "c", "state": {"waiting": {"reason": reason, "message": message}}}]
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {key: statuses}}


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                                    "CreateContainerConfigError"])
def test_a_container_that_cannot_start_is_stuck(reason):
    from schemagate import k8s

    got = k8s.stuck_reason([_pod(reason, "image x not found", init=reason == "ImagePullBackOff")], [])
    assert got is not None and got[0] == reason and "image x not found" in got[1]


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing", "ErrImagePull", "CrashLoopBackOff"])
def test_a_container_on_its_way_is_not_stuck(reason):
    from schemagate import k8s

    assert k8s.stuck_reason([_pod(reason)], []) is None


def test_a_refused_pod_is_stuck_with_the_newest_event():
    from schemagate import k8s

    events = [{"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:01Z", "message": "old"},
              {"reason": "FailedCreate", "lastTimestamp": "2026-01-01T00:00:05Z",
               "message": 'pods "x" is forbidden: violates PodSecurity "restricted:latest"'}]
    assert k8s.stuck_reason([], events) == (
        "FailedCreate", 'the Job controller could not create the step\'s pod: pods "x" is forbidden: violates '
        'PodSecurity "restricted:latest"')
    assert k8s.stuck_reason([], []) is None
    assert k8s.stuck_reason([], [{"reason": "SuccessfulCreate", "message": "created"}]) is None


def test_every_pod_with_the_backup_volume_reads_it_as_the_user_that_wrote_it():
    """The backup step writes its archives 0600 (they hold the whole database; runner/backup.py): the containers
    that mount the backup volume (backup, restore, the rehearsal's prepare) must all run as the operator image's
    user 10001, whatever spec.jobTemplate.runAsUser says (that is for the application's image)."""
    volume = {"persistentVolumeClaim": {"claimName": "backups"}}
    m = mig(jobTemplate={"runAsUser": 4242}, backup={"enabled": True, "volume": volume}, rehearsal={"enabled": True})
    jobs = [J.build_job(m, "backup", "shop-1-backup-1", 1, SETTINGS),
            J.build_job(m, "rehearse", "shop-1-rehearse-1", 1, SETTINGS, {"targetRevision": "0003"},
                        backup={"path": "/backups/shop-1.dump"}),
            J.build_restore_job(m, "r", "r-uid", "shop-restore-1", "shop-1.dump", SETTINGS, sha256="ab" * 32)]
    readers = []
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert "runAsUser" not in pod["securityContext"] and "runAsGroup" not in pod["securityContext"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            if any(v["name"] == "backups" for v in c.get("volumeMounts") or []):
                readers.append(c["name"])
                assert c["image"] == SETTINGS.runner_image and "runAsUser" not in c["securityContext"], c
    assert {"backup", "prepare", "restore"} <= set(readers), readers
