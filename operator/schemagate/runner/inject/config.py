"""Configuration and import isolation of the injected runner: the
Alembic ``Config``/``ScriptDirectory`` of the application's project, the temporary session environment (URL
variable, ``PGOPTIONS``) and ``isolated_imports`` (application modules and ``sys.path`` entries are forgotten
after each call)."""

from __future__ import annotations

import configparser
import contextlib
import functools
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import util as alembic_util
from alembic.config import Config
from alembic.script import ScriptDirectory

from schemagate.contract.dburl import DEFAULT_URL_ENV, sqlalchemy_url
from schemagate.contract.errors import InvalidInput

DEFAULT_LOCK_TIMEOUT = "5s"
APPLICATION_NAME = "schemagate-runner"


def _is_resource(text: str) -> bool:
    """``package.module:path`` (Alembic's own form for ``script_location``; never an absolute path)."""
    return ":" in text and not os.path.isabs(text)


def resource_path(text: str, option: str = "-c/--config") -> Path:
    """The filesystem path of ``package.module:path/inside`` in an installed (importable) package, the way Alembic
    resolves a packaged ``script_location`` (``importlib.resources``). Raises ``InvalidInput`` naming ``option``."""
    import importlib.resources

    package, _, inside = text.partition(":")
    try:
        ref = importlib.resources.files(package.strip())
    except (ImportError, TypeError, ValueError) as e:
        raise InvalidInput(f"{option}: {text!r}: package {package!r} cannot be imported ({e})") from e
    for part in inside.strip("/").split("/"):
        if part:
            ref = ref / part
    return Path(str(ref))


def project_location(config: str | os.PathLike[str]) -> tuple[Path | None, str | None]:
    """``(alembic.ini, None)`` or, for a project without an ini, ``(None, script location)``.

    ``config`` is the path of an ``alembic.ini``, a ``package.module:path/alembic.ini`` inside an installed package,
    or the project's script location itself (a directory holding ``env.py``, or ``package.module:path`` such as
    ``mlflow.store:db_migrations``). Raises ``InvalidInput`` naming ``-c/--config`` and the value."""
    text = os.fspath(config)
    path = resource_path(text) if _is_resource(text) else Path(text)
    if path.is_file():
        return path, None
    if path.is_dir() and (path / "env.py").is_file():
        return None, str(path.resolve())
    what = "neither an Alembic configuration file nor a directory holding env.py"
    raise InvalidInput(f"-c/--config: {text!r} ({path}) is {what}" if path.exists() else
                     f"-c/--config: Alembic configuration {text!r} not found")


def _script_location(cfg: Config, ini: Path) -> None:
    """A relative ``script_location`` is relative to the ini's own directory (never the working directory):
    the project may be installed anywhere, e.g. inside a package. ``package:path`` is left to Alembic. Raises
    ``InvalidInput`` naming the ini when there is none, or it is not a directory."""
    loc = cfg.get_main_option("script_location")
    if not loc:
        raise InvalidInput(f"-c/--config: {str(ini)!r} has no script_location in [alembic]")
    if _is_resource(loc):
        resource_path(loc, f"script_location in {ini}")  # a clear error now rather than Alembic's later
        return
    where = Path(loc) if os.path.isabs(loc) else (ini.parent / loc).resolve()
    if not where.is_dir():  # named here: Alembic's own message names neither the ini nor the option
        raise InvalidInput(f"-c/--config: {str(ini)!r}: script_location {loc!r} is not a directory ({where} "
                           "does not exist)" if not where.exists() else
                           f"-c/--config: {str(ini)!r}: script_location {loc!r} ({where}) is not a directory",
                           field="-c/--config")
    if not os.path.isabs(loc):
        cfg.set_main_option("script_location", str(where).replace("%", "%%"))


def make_config(config_path: str | os.PathLike[str], url: str | None = None) -> Config:
    """The Alembic ``Config`` of the application's project (see ``project_location`` for the forms of
    ``config_path``). ``url``, when given, is set as ``sqlalchemy.url``. Raises ``InvalidInput``."""
    ini, location = project_location(config_path)
    if ini is not None:
        cfg = Config(str(ini))
        try:
            cfg.get_main_option("script_location")  # reads the file: configparser errors surface here
        except configparser.Error as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InvalidInput(f"-c/--config: {str(ini)!r} is not a valid Alembic configuration (ini file): {first}",
                               field="-c/--config") from e
        _script_location(cfg, ini)
    else:
        cfg = Config()
        cfg.set_main_option("script_location", str(location).replace("%", "%%"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["schemagate"] = True
    return cfg


def load_script(cfg: Config) -> ScriptDirectory:
    try:
        return ScriptDirectory.from_config(cfg)
    except alembic_util.CommandError as e:
        raise InvalidInput(f"cannot load the migration scripts: {e}") from e


@contextlib.contextmanager
def session_environment(
    url: str | None, url_env: str | None, lock_timeout: str | None = None, statement_timeout: str | None = None
) -> Iterator[None]:
    """Set ``url_env`` (the URL for env.py) and ``PGOPTIONS`` (timeouts for every libpq session) temporarily."""
    saved = {k: os.environ.get(k) for k in (url_env or DEFAULT_URL_ENV, "PGOPTIONS", "PGAPPNAME")}
    try:
        if url:
            os.environ[url_env or DEFAULT_URL_ENV] = url
        opts = [o for o in [os.environ.get("PGOPTIONS", "")] if o]
        if lock_timeout is not None:
            opts.append(f"-c lock_timeout={lock_timeout}")
        if statement_timeout is not None:
            opts.append(f"-c statement_timeout={statement_timeout}")
        if opts:
            os.environ["PGOPTIONS"] = " ".join(opts)
        os.environ.setdefault("PGAPPNAME", APPLICATION_NAME)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.add(str(Path(__file__).resolve().parents[2]))  # the schemagate package itself (runner/inject/..)
    return tuple(os.path.join(os.path.abspath(d), "") for d in dirs if d)


def _forget_application_modules(before: set[str]) -> None:
    """Drop modules imported since ``before`` that live outside the standard library and installed packages."""
    libs = _library_dirs()
    for name in set(sys.modules) - before:
        f = getattr(sys.modules.get(name), "__file__", None)
        if f and not os.path.abspath(f).startswith(libs):
            sys.modules.pop(name, None)


_F = TypeVar("_F", bound=Callable[..., Any])


def isolated_imports(fn: _F) -> _F:
    """Run ``fn`` so that the application modules its env.py and revisions import (e.g. ``myapp.models``) and
    the ``sys.path`` entries Alembic prepends (``prepend_sys_path``) are gone afterwards: one process can then run
    several Alembic projects whose packages share a name, and repeated runs do not grow ``sys.path``."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        modules_before = set(sys.modules)
        path_before = list(sys.path)
        try:
            return fn(*args, **kwargs)
        finally:
            _forget_application_modules(modules_before)
            sys.path[:] = path_before

    return run  # type: ignore[return-value]


def engine_for(url: str, connect_timeout: int = 10, creator: Callable[[], Any] | None = None) -> sa.Engine:
    """A pool-less engine for ``url``; ``creator``: where its DB-API connection comes from (a session the caller
    shares between steps), instead of a new connection."""
    if creator is not None:
        return sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool, creator=creator)
    return sa.create_engine(
        sqlalchemy_url(url),
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": connect_timeout, "application_name": APPLICATION_NAME},
    )
