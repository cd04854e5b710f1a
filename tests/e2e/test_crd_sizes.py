"""kube-apiserver and schemagate.contract.sizes agree: every size field of the installed CRD accepts exactly the values
``parse_size`` accepts (the table of tests/unit/test_sizes.py), on the real test bed (server-side dry run: nothing is
stored)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from schemagate.contract.errors import InvalidInput
from schemagate.contract.sizes import parse_size
from tests.e2e.test_operator import crd, dbm  # noqa: F401 (the CRD fixture)
from tests.unit.test_sizes import SIZE_FIELDS, SIZE_VALUES

pytestmark = pytest.mark.e2e


def _with_sizes(name: str, value: str) -> dict[str, Any]:
    obj = dbm(name)
    s = obj["spec"]
    s["precheck"] = {"dataShadow": {"maxSize": value}, "shadowDatabase": {"sizeLimit": value}}
    s["rehearsal"] = {"maxSize": value}
    s["backup"] = {"enabled": True, "volume": {"emptyDir": {"sizeLimit": value}}}
    return obj


def _parser_accepts(value: str) -> bool:
    try:
        parse_size(value, "spec.precheck.dataShadow.maxSize")
    except InvalidInput:
        return False
    return True


def test_the_api_server_accepts_exactly_what_the_parser_accepts(kube: Any, crd: None, namespace: str) -> None:  # noqa: F811
    names = {f"size-{i}": value for i, (value, _bytes) in enumerate(SIZE_VALUES)}
    items = [_with_sizes(name, value) for name, value in names.items()]
    r = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), check=False)
    refused = set(re.findall(r'DatabaseMigration[.a-z]* "(size-[0-9]+)" is invalid', r.stderr))
    accepted = set(re.findall(r"databasemigration\.schemagate\.dev/(size-[0-9]+) created", r.stdout))
    assert refused | accepted == set(names), r.stdout + r.stderr
    disagree = [f"{value!r}: kube-apiserver {'refuses' if name in refused else 'accepts'}, parse_size "
                f"{'accepts' if _parser_accepts(value) else 'refuses'}"
                for name, value in names.items() if (name in accepted) is not _parser_accepts(value)]
    assert not disagree, "\n".join(disagree)
    assert len(refused) >= 20 and len(accepted) >= 20
    # a refusal names each size field
    first = re.search(r'DatabaseMigration[.a-z]* "size-[0-9]+" is invalid: (.*)', r.stderr)
    assert first and all(field in first.group(1) for field in SIZE_FIELDS), first
