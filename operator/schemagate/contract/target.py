"""``Target``: what a step works on (the application's Alembic project, the target revision, the database), one
frozen value built once from the options and carried through every step instead of four loose parameters.

Standard library only (the CLI imports it without loading SQLAlchemy or Alembic)."""

from __future__ import annotations

import dataclasses
import os

from schemagate.contract.dburl import DEFAULT_URL_ENV, resolve_url
from schemagate.contract.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class Target:
    """What a step works on: the application's Alembic project (``config``: see ``project_location`` for its
    forms; None for a step that can work without it, verify with a plan), the target ``revision`` (``head``,
    ``heads``, an id, ``label@head``), and the database: ``url``, or the environment variable ``url_env`` holding
    it (the URL is never stored in a log or a result). Built once from the options (CLI, injected runner) and
    passed down unchanged; ``at``/``on`` derive the resolved revision and shadow or scratch copies."""

    config: str | os.PathLike[str] | None
    revision: str | None = "head"
    url: str | None = None
    url_env: str | None = DEFAULT_URL_ENV

    def resolved(self) -> Target:
        """The same target with ``url`` read from ``url_env`` when not given (``InvalidInput`` naming the
        variable when neither is set)."""
        return dataclasses.replace(self, url=resolve_url(self.url, self.url_env))

    @property
    def project(self) -> str | os.PathLike[str]:
        """``config``; ``InvalidInput`` naming -c/--config when there is none."""
        if self.config is None or str(self.config) == "":
            raise InvalidInput("-c/--config is required (the application's alembic.ini)", field="-c/--config")
        return self.config

    @property
    def database_url(self) -> str:
        """``url`` of a resolved target (``resolved()`` first)."""
        if self.url is None:
            raise InvalidInput(f"no database URL: the environment variable {self.url_env} is not set")
        return self.url

    def at(self, revision: str) -> Target:
        """The same project and database with another target revision (e.g. the resolved id)."""
        return dataclasses.replace(self, revision=revision)

    def on(self, url: str) -> Target:
        """The same project and target revision on another database (a shadow or scratch copy): ``url`` is
        handed to env.py through the same variable ``url_env``."""
        return dataclasses.replace(self, url=url)
