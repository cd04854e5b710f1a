"""Who holds a database Lease (pure): the ``holderIdentity`` of the ``coordination.k8s.io/v1`` Lease
``schemagate-db-<hash>`` that serializes everything that changes one database (``schemagate.k8s.lease_name``).

Two kinds of object take it: a DatabaseMigration for its run (``<namespace>/<name>/<uid>``) and a DatabaseRestore
with ``replace: true`` for its restore over the database (``DatabaseRestore/<namespace>/<name>/<uid>``). Kubernetes
names and namespaces hold no ``/``, so the two forms cannot be confused.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemagate.contract import names

MIGRATION_KIND = names.KIND
RESTORE_KIND = "DatabaseRestore"


@dataclass(frozen=True)
class Holder:
    """A Lease holder: the kind, namespace, name and uid of the object that holds it."""

    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def id(self) -> str:
        """The ``holderIdentity`` written into the Lease."""
        base = f"{self.namespace}/{self.name}/{self.uid}"
        return base if self.kind == MIGRATION_KIND else f"{self.kind}/{base}"

    def describe(self) -> str:
        """``<namespace>/<name>`` for a DatabaseMigration, ``DatabaseRestore <namespace>/<name>`` for a restore (the
        words of ``WaitingForDatabaseLock`` messages)."""
        where = f"{self.namespace}/{self.name}"
        return where if self.kind == MIGRATION_KIND else f"{self.kind} {where}"

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        """The holder a ``holderIdentity`` names; None for anything else (a Lease written by something else)."""
        parts = (text or "").split("/")
        if len(parts) == 3 and all(parts):
            return cls(MIGRATION_KIND, *parts)
        if len(parts) == 4 and parts[0] == RESTORE_KIND and all(parts):
            return cls(RESTORE_KIND, *parts[1:])
        return None
