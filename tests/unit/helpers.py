"""Builders shared by the operator's unit tests."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from schemagate.core.decide import ACTIVE, FAILED, SUCCEEDED, Action, JobObs, LockObs, Observed, decide
from schemagate.core.model import Migration

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def body(name: str = "shop", generation: int = 1, retry: str | None = None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "database": {"urlFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        "migrations": {"image": "registry.example/shop:1.2", "directory": "/app", "targetRevision": "head"},
        "backup": {"enabled": True, "volume": {"persistentVolumeClaim": {"claimName": "backups"}}},
    }
    s.update(spec)
    meta: dict[str, Any] = {"name": name, "namespace": "team", "uid": "uid-1234", "generation": generation}
    if retry is not None:
        meta["annotations"] = {"schemagate.dev/retry": retry}
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "DatabaseMigration", "metadata": meta, "spec": s}


def mig(**kw: Any) -> Migration:
    return Migration.from_body(body(**kw))


def result(step: str, outcome: str = "Succeeded", reason: str = "", message: str = "ok",
           **data: Any) -> dict[str, Any]:
    return {"apiVersion": "schemagate.dev/v1alpha1", "kind": "StepResult", "schemaVersion": 1, "step": step,
            "outcome": outcome, "reason": reason or outcome, "message": message, "data": data,
            "startedAt": "2025-01-01T12:00:00Z", "finishedAt": "2025-01-01T12:00:01Z"}


OK_RESULTS = {
    "backup": result("backup", reason="BackupCompleted", path="/backups/x.dump", sizeBytes=10, sha256="ab"),
    "precheck": result("precheck", reason="PrecheckPassed", currentRevision="0001", targetRevision="0002",
                       pending=["0002"], total=0, maxViolations=0,
                       checks=[{"name": "ck_price", "table": "orders", "kind": "check",
                                "definition": "price >= 0", "count": 0}],
                       indexes=[{"name": "ix", "table": "orders", "definition": "..."}]),
    "migrate": result("migrate", reason="Migrated", fromRevision="0001", toRevision="0002", applied=["0002"]),
    "verify": result("verify", reason="Verified", currentRevision="0002", targetRevision="0002"),
}

EXIT = {"Succeeded": 0, "ChecksFailed": 3, "PermanentError": 4, "TransientError": 5}


def job_for(action_or_name: Any, step: str, gen: int = 1, state: str = ACTIVE,
            res: dict[str, Any] | None = None, counter: int = 1) -> JobObs:
    name = action_or_name.create.name if isinstance(action_or_name, Action) else action_or_name
    code = None if state == ACTIVE or res is None else EXIT[res["outcome"]]
    return JobObs(name=name, step=step, generation=gen, counter=counter, state=state, result=res, exit_code=code)


def finished(name: str, step: str, res: dict[str, Any], gen: int = 1) -> JobObs:
    state = SUCCEEDED if res["outcome"] == "Succeeded" else FAILED
    return job_for(name, step, gen, state, res)


class Sim:
    """A tiny fake cluster: applies Actions (status-first, then Job), lets the test finish Jobs."""

    def __init__(self, m: Migration, now: dt.datetime = T0, lock_holder: str | None = None) -> None:
        self.m = m
        self.status: dict[str, Any] = {}
        self.jobs: dict[str, JobObs] = {}
        self.created: list[str] = []
        self.now = now
        self.lock_mine = False
        self.lock_holder = lock_holder
        self.secret_error: str | None = None
        self.events: list[Any] = []
        self.phases: list[str] = []

    def observed(self) -> Observed:
        return Observed(now=self.now, jobs=tuple(self.jobs.values()), secret_error=self.secret_error,
                        lock=LockObs(mine=self.lock_mine, holder=None if self.lock_mine else self.lock_holder))

    def step(self) -> Action:
        a = decide(self.m, copy.deepcopy(self.status), self.observed())
        if a.lock == "acquire":
            if self.lock_holder and not self.lock_mine:
                raise AssertionError("decide asked to acquire a lock held by another resource")
            self.lock_mine = True
        if a.lock == "release":
            self.lock_mine = False
        self.status = a.status
        if not self.phases or self.phases[-1] != a.phase:
            self.phases.append(a.phase)
        self.events.extend(a.events)
        if a.create:
            if a.create.name not in self.jobs:
                self.created.append(a.create.name)
                self.jobs[a.create.name] = JobObs(name=a.create.name, step=a.create.step,
                                                  generation=int(self.status["run"]["generation"]),
                                                  counter=a.create.counter)
        return a

    def finish(self, step: str, res: dict[str, Any], name: str | None = None) -> None:
        name = name or self.status["jobs"][step]
        j = self.jobs[name]
        self.jobs[name] = JobObs(name=j.name, step=j.step, generation=j.generation, counter=j.counter,
                                 state=SUCCEEDED if res["outcome"] == "Succeeded" else FAILED, result=res,
                                 exit_code=EXIT[res["outcome"]])

    def run(self, results: dict[str, dict[str, Any]] | None = None, max_steps: int = 20) -> Action:
        results = {**OK_RESULTS, **(results or {})}
        a = self.step()
        for _ in range(max_steps):
            if a.create is not None:
                self.finish(a.create.step, results[a.create.step])
            else:
                active = [j for j in self.jobs.values() if j.active and j.name in self.status.get("jobs", {}).values()]
                if not active:
                    return a
                self.finish(active[0].step, results[active[0].step])
            a = self.step()
        return a
