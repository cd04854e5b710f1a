"""User checks: named SQL queries that return one number, the count of violating rows.

``spec.precheck.checks`` / ``spec.verify.checks`` (``[{name, sql}]``; manifests/crd.yaml), ``--check NAME=SQL`` on
the command line, and Python callers' mappings, pairs or ``UserCheck`` values are all read by ``UserCheck.parse``
(one item) and ``UserCheck.parse_all`` (a list). One rule for duplicates: a second check with the same name is
``InvalidInput`` naming the check (the CRD enforces the same with ``x-kubernetes-list-map-keys: [name]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from schemagate.contract.errors import InvalidInput
from schemagate.contract.sqlkind import single_select_problem


@dataclass(frozen=True)
class UserCheck:
    """``name`` (unique in its list), ``sql`` (a read-only query returning one number; stripped, without a trailing
    ``;``), ``table`` (optional ``schema.table`` it is about, for display)."""

    name: str
    sql: str
    table: str | None = None

    @classmethod
    def parse(cls, item: object, field: str = "check") -> UserCheck:
        """One check from ``"NAME=SQL"``, ``{"name", "sql", "table"?}``, a ``(name, sql)`` pair or a ``UserCheck``.

        Raises ``InvalidInput`` naming ``field`` (and the check's name when known) when the name or the SQL is
        missing or the item has another shape."""
        if isinstance(item, UserCheck):
            return item
        name: object
        sql: object
        table: object
        if isinstance(item, str):
            name, sep, sql = item.partition("=")
            if not sep:
                raise InvalidInput(f"{field}: {item!r} is not NAME=SQL (SQL returning a count)", field=field)
            table = None
        elif isinstance(item, Mapping):
            name, sql, table = item.get("name"), item.get("sql"), item.get("table")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            name, sql = item
            table = None
        else:
            raise InvalidInput(f"{field}: cannot read a user check from {item!r} (expected NAME=SQL or "
                               f"{{name, sql}})", field=field)
        name = str(name or "").strip()
        sql = str(sql or "").strip().rstrip(";").strip()
        if not name:
            raise InvalidInput(f"{field}: a user check needs a name ({item!r})", field=field)
        if not sql:
            raise InvalidInput(f"{field}: user check {name!r} has no SQL", field=f"{field} {name}")
        problem = single_select_problem(sql)
        if problem:
            raise InvalidInput(f"{field}: user check {name!r} is not a single read-only SELECT returning a count: "
                               f"{problem}", field=f"{field} {name}")
        return cls(name=name, sql=sql, table=str(table) if table else None)

    @classmethod
    def parse_all(cls, items: Iterable[object] | None, field: str = "check") -> tuple[UserCheck, ...]:
        """Every check of ``items`` in order; a repeated name is ``InvalidInput`` naming it."""
        out: list[UserCheck] = []
        seen: set[str] = set()
        for item in items or ():
            c = cls.parse(item, field)
            if c.name in seen:
                raise InvalidInput(f"{field}: two user checks are named {c.name!r}; names must be unique",
                                   field=f"{field} {c.name}")
            seen.add(c.name)
            out.append(c)
        return tuple(out)

    def to_dict(self) -> dict[str, str]:
        d = {"name": self.name, "sql": self.sql}
        if self.table:
            d["table"] = self.table
        return d
