"""pytest option of the conformance runner: ``--cases DIR`` (or ``SCHEMAGATE_CASES=DIR``), the case corpus."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cases", action="store", default=None, metavar="DIR",
        help="case corpus for tests/conformance (default $SCHEMAGATE_CASES, else ../shared/cases/precheck "
             "relative to the repository)",
    )
