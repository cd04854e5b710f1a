"""What the operator knows about the database's Alembic revisions without the revision graph (pure, no I/O).

The revision graph lives in the application's image, so only a Job can resolve a target against it. But the runs
of one DatabaseMigration see the database move: a successful upgrade goes from ``status.currentRevision`` along
the revisions it applied (``alembic upgrade`` only moves forward), so each of them, and the revision(s) it started
from, lies below the revision it reached. ``status.revisionsBelow`` keeps that knowledge across runs (oldest
first, at most :data:`MAX_REVISIONS_BELOW`), and a named ``spec.migrations.targetRevision`` among them is a
downgrade the operator refuses before any Job (``DowngradeNotAllowed``) unless ``spec.allowDowngrade`` is true.

The knowledge is only ever kept while it is sound: it is forgotten when a precheck finds the database at another
revision than the status recorded (changed outside this resource) and after a downgrade (which revisions are
below the downgrade's target is again a question for the graph).
"""

from __future__ import annotations

from collections.abc import Iterable

from schemagate.core.status import MigrationStatus

MAX_REVISIONS_BELOW = 500
NOT_A_REVISION = ("", "base")  # Alembic's name of the empty database; no version row


def revision_set(text: object) -> frozenset[str]:
    """The revision ids of a comma-joined revision text (``status.currentRevision``, a target): ``"0002a,0002b"``
    → ``{"0002a", "0002b"}``; None, ``""`` and ``"base"`` → the empty set."""
    return frozenset(r.strip() for r in str(text or "").split(",") if r.strip() not in NOT_A_REVISION)


def observed(st: MigrationStatus, revision: object) -> None:
    """A step read the database at ``revision`` (the precheck's ``currentRevision``; None: no version row): when
    it is not what ``st.currentRevision`` recorded, the database moved outside this resource and what was known
    below the recorded revision is forgotten."""
    if revision_set(revision) != revision_set(st.get("currentRevision")):
        st.pop("revisionsBelow", None)


def _planned(st: MigrationStatus) -> list[str]:
    plan = st.get("plan")
    return list(plan.get("pending") or []) if plan is not None else []


def moved_up(st: MigrationStatus, revision: object, applied: Iterable[str] | None = None) -> None:
    """An upgrade took the database from ``st.currentRevision`` to ``revision`` applying ``applied`` (in order;
    None: the precheck's plan, ``st.plan.pending``): the old revision(s) and the applied ones that are not now
    current are added to ``st.revisionsBelow``. Call it before ``st.currentRevision`` is set to ``revision``.
    Nothing changes when the revision did not move."""
    old, new = revision_set(st.get("currentRevision")), revision_set(revision)
    if old == new:
        return
    known = list(st.get("revisionsBelow") or [])
    for r in [*sorted(old), *(str(a) for a in (_planned(st) if applied is None else applied))]:
        if r not in known and r not in NOT_A_REVISION:
            known.append(r)
    st["revisionsBelow"] = [r for r in known if r not in new][-MAX_REVISIONS_BELOW:]


def moved_down(st: MigrationStatus) -> None:
    """A downgrade ran: which of the known revisions lie below its target is unknown here, so nothing is kept."""
    st.pop("revisionsBelow", None)


def reached(st: MigrationStatus, revision: object) -> None:
    """The run's verify step read the database at ``revision``: after the run's downgrade (``st.plan.downgrade``)
    :func:`moved_down`, else :func:`moved_up` along the plan (a migrate command of the user's,
    ``spec.migrations.command``, reports no revision of its own)."""
    plan = st.get("plan")
    if plan is not None and plan.get("downgrade"):
        moved_down(st)
    else:
        moved_up(st, revision)


def known_below(st: MigrationStatus, target: str) -> bool:
    """Whether the named ``target`` (one revision id, or several comma-joined) is known to lie below the
    database's revision: every id is in ``st.revisionsBelow`` and the target is not the current revision. Only
    exact revision ids match; ``head``, a branch label, a relative target or an id prefix never do (the Job then
    finds out, with the graph)."""
    ids = revision_set(target)
    below = set(st.get("revisionsBelow") or [])
    return bool(ids) and ids <= below and not ids <= revision_set(st.get("currentRevision"))
