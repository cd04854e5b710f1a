"""The revision graph as Alembic models it: the database's current heads (a set), the target (``head``, ``heads``,
a revision id, ``label@head``, a relative ``label@+1``) and what ``alembic upgrade <target>`` does from there.

Nothing here walks the graph by hand: the pending revisions are ``ScriptDirectory._upgrade_revs`` (the list
``alembic upgrade`` itself runs, ``alembic.command.upgrade``), and the version rows they leave are worked out by
Alembic's own ``alembic.runtime.migration.HeadMaintainer`` replaying those steps on a set instead of the version
table. Alembic's errors (``MultipleHeads``, ``ResolutionError``, ``RangeNotAncestorError``) become the runner's
``MultipleHeads``, ``UnknownRevision`` and ``InvalidInput``, each naming the heads that exist and what to do.

Public API: ``plan_upgrade(script, current, target) -> UpgradePlan``; ``alembic_target(text) -> str | tuple``;
``join_revisions(ids) -> str | None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from alembic import util as alembic_util
from alembic.runtime.migration import HeadMaintainer
from alembic.script import ScriptDirectory
from alembic.script import revision as alembic_revision

from schemagate.contract.errors import DowngradeNotAllowed, InvalidInput, MultipleHeads, UnknownRevision

NOTHING_CHANGED = "nothing was changed"


def join_revisions(ids: Iterable[str]) -> str | None:
    """Revision ids as the version table holds them: sorted, comma-separated (``"0002a,0002b"``); None if none."""
    out = sorted(set(ids))
    return ",".join(out) if out else None


def split_revisions(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The inverse of ``join_revisions``: ``"0002a,0002b"`` -> ``("0002a", "0002b")``; None/"" -> ``()``."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(sorted({i.strip() for i in items if i and i.strip()}))


def alembic_target(target: str | None) -> str | tuple[str, ...]:
    """The destination handed to Alembic: ``head`` when empty, a tuple for a comma-separated list of revision ids
    (what ``plan`` reports as the resolved target of ``heads``), else the text unchanged."""
    text = (target or "head").strip()
    if "," in text:
        return split_revisions(text)
    return text


class _CountingHeads(HeadMaintainer):
    """Alembic's HeadMaintainer on a set only: the version-table writes are left out, the bookkeeping (branch
    insert, delete, merge, unmerge, update) is Alembic's own ``update_to_step``."""

    def __init__(self, heads: Iterable[str]) -> None:
        # the context is only used to write the version table, which this subclass never does
        super().__init__(context=None, heads=heads)  # type: ignore[arg-type]

    def _insert_version(self, version: str) -> None:
        self.heads.add(version)

    def _delete_version(self, version: str) -> None:
        self.heads.remove(version)

    def _update_version(self, from_: str, to_: str) -> None:
        self.heads.remove(from_)
        self.heads.add(to_)


@dataclass(frozen=True)
class UpgradePlan:
    """What ``alembic upgrade <target>`` does from ``current``.

    ``current``: the version rows now (sorted); ``target``: the target as given; ``target_ids``: the revisions it
    resolves to (sorted); ``pending``: revision ids in apply order (merge revisions included); ``expected``: the
    version rows after the upgrade (sorted); ``script_heads``: the heads of the migration scripts (sorted)."""

    current: tuple[str, ...]
    target: str
    target_ids: tuple[str, ...]
    pending: tuple[str, ...]
    expected: tuple[str, ...]
    script_heads: tuple[str, ...]

    @property
    def resolved_target(self) -> str:
        """The target as revision ids (comma-separated for several), stable across runs of the same scripts."""
        return join_revisions(self.target_ids) or self.target


def _labels(script: ScriptDirectory, rev_id: str) -> list[str]:
    rev = script.get_revision(rev_id)
    return sorted(getattr(rev, "branch_labels", None) or ())


def describe_heads(script: ScriptDirectory, heads: Iterable[str]) -> str:
    """``0002a (branch left), 0003b (branch right)``: ids with their branch labels."""
    parts = []
    for h in sorted(heads):
        labels = _labels(script, h)
        parts.append(f"{h} (branch {', '.join(labels)})" if labels else h)
    return ", ".join(parts)


def _multiple_heads(script: ScriptDirectory, target: str, current: Sequence[str],
                    heads: Sequence[str]) -> MultipleHeads:
    labelled = [f"'{label}@head'" for h in heads for label in _labels(script, h)]
    choices = "'heads' (all of them)"
    if labelled:
        choices += ", one branch (" + ", ".join(labelled) + ")"
    return MultipleHeads(
        f"target {target!r} is ambiguous: the migration scripts have {len(heads)} heads "
        f"({describe_heads(script, heads)}) and the database is at {join_revisions(current) or 'base'}; set the "
        f"target to {choices} or one revision id, or merge the heads (alembic merge heads) and target the merge; "
        f"{NOTHING_CHANGED}",
        heads=sorted(heads), currentRevisions=sorted(current),
    )


def _check_current(script: ScriptDirectory, current: Sequence[str]) -> None:
    for rev in current:
        try:
            found = script.get_revision(rev)
        except alembic_util.CommandError:
            found = None
        if found is None:
            raise UnknownRevision(
                f"the database is at revision {rev!r}, which the migration scripts do not contain (an older "
                f"image, or a revision deleted from the scripts); heads of the scripts: "
                f"{describe_heads(script, script.get_heads())}; {NOTHING_CHANGED}"
            )


def _resolve(script: ScriptDirectory, target: str, current: Sequence[str]) -> tuple[str, ...]:
    dest = alembic_target(target)
    try:
        if isinstance(dest, str) and alembic_revision._relative_destination.match(dest):  # +1, label@+2
            return ()
        revs = script.revision_map.get_revisions(dest)
    except alembic_revision.MultipleHeads as e:
        raise _multiple_heads(script, target, current, script.get_heads()) from e
    except alembic_revision.RevisionError as e:
        raise UnknownRevision(
            f"unknown target revision {target!r} ({e}); heads of the scripts: "
            f"{describe_heads(script, script.get_heads())}; {NOTHING_CHANGED}"
        ) from e
    return tuple(sorted(r.revision for r in revs if r is not None and not isinstance(r, str)))


def _refuse_downgrade(script: ScriptDirectory, target: str, target_ids: Sequence[str],
                      current: Sequence[str]) -> None:
    """A target that is already below the database's heads is a no-op for ``alembic upgrade``; schemagate refuses it
    (it would report success at a revision the user did not ask for)."""
    if not current or not target_ids or set(target_ids) <= set(current):
        return
    rmap = script.revision_map
    below = {r.revision for r in rmap._get_ancestor_nodes(rmap.get_revisions(current)) if not isinstance(r, str)}
    if set(target_ids) <= below:
        raise DowngradeNotAllowed(
            f"target revision {target!r} is older than the database's revision(s) {join_revisions(current)}: "
            f"a downgrade, which runs only when allowed (schemagate run --allow-downgrade; spec.allowDowngrade: "
            f"true); "
            f"{NOTHING_CHANGED}", field="targetRevision"
        )


def _steps(script: ScriptDirectory, target: str, current: Sequence[str]) -> list[Any]:
    try:
        return script._upgrade_revs(alembic_target(target), tuple(current))  # type: ignore[arg-type]
    except alembic_util.CommandError as e:
        cause = e.__cause__
        if isinstance(cause, alembic_revision.MultipleHeads):
            raise _multiple_heads(script, target, current, script.get_heads()) from e
        if isinstance(cause, alembic_revision.ResolutionError):
            raise UnknownRevision(f"unknown target revision {target!r} ({e}); {NOTHING_CHANGED}") from e
        raise InvalidInput(
            f"cannot upgrade from {join_revisions(current) or 'base'} to {target!r}: {e}; heads of the scripts: "
            f"{describe_heads(script, script.get_heads())}; {NOTHING_CHANGED}"
        ) from e


def plan_upgrade(script: ScriptDirectory, current: Iterable[str], target: str | None) -> UpgradePlan:
    """What ``alembic upgrade <target>`` does on a database whose version table holds ``current``.

    Raises ``MultipleHeads`` (target ``head`` or ``label@head`` with several heads: names them, their branch
    labels and the targets that work), ``UnknownRevision`` (an unknown target, or a current revision the
    scripts lack), ``InvalidInput`` (a target below the database's revisions, or one Alembic cannot reach). Source:
    ``alembic.command.upgrade`` (``script._upgrade_revs(destination, heads)``) and ``HeadMaintainer``."""
    heads = tuple(sorted(script.get_heads()))
    if not heads:
        raise InvalidInput("the migration scripts have no revisions")
    cur = split_revisions(tuple(current))
    text = (target or "head").strip()
    if text == "base":
        raise DowngradeNotAllowed(f"--target base is a downgrade, which runs only when allowed (schemagate run "
                                  f"--allow-downgrade; spec.allowDowngrade: true); "
                                  f"{NOTHING_CHANGED}", field="targetRevision")
    _check_current(script, cur)
    target_ids = _resolve(script, text, cur)
    _refuse_downgrade(script, text, target_ids, cur)
    steps = _steps(script, text, cur)
    maintainer = _CountingHeads(cur)
    for step in steps:
        maintainer.update_to_step(step)
    expected = tuple(sorted(maintainer.heads))
    if not target_ids:  # a relative target: what it reached
        target_ids = tuple(sorted(s.revision.revision for s in steps[-1:])) or cur
    return UpgradePlan(current=cur, target=text, target_ids=target_ids,
                       pending=tuple(s.revision.revision for s in steps), expected=expected, script_heads=heads)


def reached(script: ScriptDirectory, pending: Sequence[str], heads: Iterable[str]) -> list[str]:
    """The revisions of ``pending`` (order kept) that are one of ``heads`` or an ancestor of one."""
    heads = [h for h in heads if h]
    if not heads:
        return []
    rmap = script.revision_map
    below = {r.revision for r in rmap._get_ancestor_nodes(rmap.get_revisions(tuple(heads)))}
    return [p for p in pending if p in below]
