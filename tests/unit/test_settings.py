"""OperatorSettings.from_env: defaults, every variable, and a clear error naming a bad one."""

from __future__ import annotations

import pytest

from schemagate import settings as S
from schemagate.settings import OperatorSettings, SettingsError

IMAGE = {"SCHEMAGATE_RUNNER_IMAGE": "registry.example/schemagate:0.1.0"}


def test_defaults(tmp_path):
    s = OperatorSettings.from_env(IMAGE, sa_namespace_file=str(tmp_path / "absent"))
    assert (s.runner_pull_policy, s.metrics_port, s.health_port) == ("IfNotPresent", 8000, 8080)
    assert (s.retry_base_seconds, s.retry_cap_seconds, s.resync_seconds) == (10.0, 300.0, 300.0)
    assert (s.lease_namespace, s.pod_namespace, s.instance) == ("default", "default", "schemagate")
    assert s.namespaces == () and not s.all_namespaces and not s.exact_namespaces
    assert s.retry_policy.backoff(3) == 40.0 and s.job_settings.runner_image == IMAGE["SCHEMAGATE_RUNNER_IMAGE"]


def test_every_variable_is_read():
    env = {**IMAGE, "SCHEMAGATE_RUNNER_PULL_POLICY": "Always", "SCHEMAGATE_LEASE_NAMESPACE": "locks",
           "POD_NAMESPACE": "ops", "SCHEMAGATE_METRICS_PORT": "0", "SCHEMAGATE_HEALTH_PORT": "9090",
           "SCHEMAGATE_RETRY_BASE_SECONDS": "1", "SCHEMAGATE_RETRY_CAP_SECONDS": "4.5",
           "SCHEMAGATE_SECRET_POLL_SECONDS": "2", "SCHEMAGATE_LOCK_POLL_SECONDS": "0.5",
           "SCHEMAGATE_RESYNC_SECONDS": "60", "SCHEMAGATE_NAMESPACES": " a, b ,", "SCHEMAGATE_ALL_NAMESPACES": "0",
           "HOSTNAME": "schemagate-7d9f", "SCHEMAGATE_LEADER_ELECTION": "false",
           "SCHEMAGATE_LEADER_ELECTION_LEASE": "ops-leader", "SCHEMAGATE_LEADER_LEASE_SECONDS": "9"}
    s = OperatorSettings.from_env(env)
    assert s.runner_pull_policy == "Always" and s.lease_namespace == "locks" and s.pod_namespace == "ops"
    assert (s.metrics_port, s.health_port) == (0, 9090)
    p = s.retry_policy
    assert (p.base_seconds, p.cap_seconds, p.secret_poll_seconds, p.lock_poll_seconds) == (1.0, 4.5, 2.0, 0.5)
    assert s.resync_seconds == 60.0 and s.namespaces == ("a", "b") and s.exact_namespaces
    assert s.instance == "schemagate-7d9f"
    assert (s.leader_election, s.leader_election_lease, s.leader_lease_seconds) == (False, "ops-leader", 9.0)
    assert [env_name for env_name, _, _ in S.describe()] == list(env)


def test_lease_namespace_falls_back_to_pod_namespace_then_the_service_account(tmp_path):
    assert OperatorSettings.from_env({**IMAGE, "POD_NAMESPACE": "ops"}).lease_namespace == "ops"
    sa = tmp_path / "namespace"
    sa.write_text("from-sa\n")
    assert OperatorSettings.from_env(IMAGE, sa_namespace_file=str(sa)).lease_namespace == "from-sa"


@pytest.mark.parametrize(("name", "value"), [
    ("SCHEMAGATE_RETRY_BASE_SECONDS", "1m"), ("SCHEMAGATE_RETRY_CAP_SECONDS", "-1"),
    ("SCHEMAGATE_LOCK_POLL_SECONDS", "nan"), ("SCHEMAGATE_METRICS_PORT", "http"), ("SCHEMAGATE_HEALTH_PORT", "70000"),
    ("SCHEMAGATE_ALL_NAMESPACES", "maybe"), ("SCHEMAGATE_RUNNER_PULL_POLICY", "always"),
    ("SCHEMAGATE_LEADER_ELECTION", "sometimes"), ("SCHEMAGATE_LEADER_LEASE_SECONDS", "1"),
])
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError) as e:
        OperatorSettings.from_env({**IMAGE, name: value})
    assert e.value.variable == name and name in str(e.value) and repr(value) in str(e.value)


def test_the_runner_image_is_required():
    with pytest.raises(SettingsError, match="SCHEMAGATE_RUNNER_IMAGE"):
        OperatorSettings.from_env({})
    assert OperatorSettings.from_env({}, require_image=False).runner_image == ""


def test_glob_namespaces_keep_scanning_on():
    assert not OperatorSettings.from_env({**IMAGE, "SCHEMAGATE_NAMESPACES": "team-*"}).exact_namespaces
    assert not OperatorSettings.from_env({**IMAGE, "SCHEMAGATE_NAMESPACES": "a",
                                          "SCHEMAGATE_ALL_NAMESPACES": "true"}).exact_namespaces


def test_status_literals_spell_the_shared_names():
    """core.status's Literal types and constants say what schemagate.contract.names says."""
    import typing

    from schemagate.contract import names
    from schemagate.core import status

    assert typing.get_args(status.Phase) == tuple(p.value for p in names.Phase) == status.PHASES
    assert typing.get_args(status.Step) == tuple(s.value for s in names.STEPS)
    assert status.PHASE_OF_STEP == {s.value: p.value for s, p in names.PHASE_OF_STEP.items()}
    assert set(status.TERMINAL_PHASES) == {p.value for p in names.TERMINAL_PHASES}
    assert set(status.STALLED_PHASES) == {p.value for p in names.STALLED_PHASES}
