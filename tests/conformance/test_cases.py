"""Conformance: every case of a migration-safety corpus through the real ``schemagate`` CLI on a real PostgreSQL.

The corpus is ``--cases DIR`` or ``SCHEMAGATE_CASES=DIR``, by default ``../shared/cases/precheck`` next to the
repository (``make cases``; also part of ``make test``). A missing corpus fails naming the directories tried; it
never skips. What is run and compared per case: ``tests/conformance/corpus.py``.

``KNOWN_FAILING`` lists the cases of the shared corpus that fail today, each with the reason and the issue item
that fixes it; they run as ``xfail(strict=True)``, so a case that starts passing fails the suite until its fixer
removes the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conformance import corpus

pytestmark = pytest.mark.postgres

# case folder -> why it fails today (issue item that fixes it). Remove the entry with the fix.
KNOWN_FAILING: dict[str, str] = {
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_dir" not in metafunc.fixturenames:
        return
    try:
        d = corpus.corpus_dir(metafunc.config.getoption("--cases"))
    except corpus.CorpusError as e:
        metafunc.parametrize("case_dir", [pytest.param(e, id="corpus-missing")])
        return
    params = []
    for p in corpus.case_dirs(d):
        marks = []
        if p.name in KNOWN_FAILING:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILING[p.name], raises=corpus.Mismatch))
        params.append(pytest.param(p, id=p.name, marks=marks))
    metafunc.parametrize("case_dir", params)


def test_case(case_dir: Path | corpus.CorpusError, make_db: Callable[[], str], tmp_path: Path) -> None:
    if isinstance(case_dir, corpus.CorpusError):
        pytest.fail(str(case_dir), pytrace=False)
    case = corpus.load_case(case_dir)
    corpus.run_case(case, tmp_path / case.name, make_db)
