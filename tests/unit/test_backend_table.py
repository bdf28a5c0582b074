"""The backend table (flowstore/api/backends.py) against every place a backend must also appear:
its Storage class, the FlowStorage CRD (a property block, the exactly-one CEL rule, its message and
the spec's description), the pip extras in pyproject.toml and the FlowStorage table in
docs/resources.md. Adding or renaming a backend fails here until each place is touched."""

from __future__ import annotations

import importlib
import re
import tomllib
from typing import Any

import pytest
import yaml

from flowstore.api.backends import BACKEND_KEYS, BACKENDS, COMMON_FIELDS, Backend
from flowstore.storage.base import Storage
from tests.helpers.localcloud import ROOT

#: FlowStorage spec fields beside the backend blocks (the shared options)
SHARED_SPEC_FIELDS = COMMON_FIELDS | {"build", "signing", "deletionPolicy", "interval", "suspend", "serviceAccountName",
                                      "revisionHistoryLimit", "retention"}
#: extras that are not a backend's SDK
NON_BACKEND_EXTRAS = {"operator", "client", "prefect", "all", "test"}
FAMILIES = {"objects", "image", "git", "oci"}


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "flowstore.dev_flowstorages.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _one_of_rule() -> dict[str, str]:
    rules = [r for r in _spec_schema()["x-kubernetes-validations"] if "filter(x, x).size() == 1" in r["rule"]]
    assert len(rules) == 1, rules
    rule: dict[str, str] = rules[0]
    return rule


def _extras() -> dict[str, list[str]]:
    extras: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return extras


def test_rows_are_unique() -> None:
    assert len(set(BACKEND_KEYS)) == len(BACKENDS)
    assert len({b.class_name for b in BACKENDS}) == len(BACKENDS)
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", b.key) for b in BACKENDS)  # camelCase, as CRD fields


@pytest.mark.parametrize("row", BACKENDS, ids=BACKEND_KEYS)
def test_each_row_names_its_storage_class(row: Backend) -> None:
    cls = getattr(importlib.import_module(row.module), row.class_name)
    assert issubclass(cls, Storage)
    assert cls.type_name == row.class_name  # serialize()'s `type`, which the registry maps back
    assert cls.family in FAMILIES


def test_the_crd_has_a_block_for_each_backend_and_nothing_else() -> None:
    fields = list(_spec_schema()["properties"])
    blocks = [f for f in fields if f not in SHARED_SPEC_FIELDS]
    assert blocks == list(BACKEND_KEYS)  # in the table's order
    for key in BACKEND_KEYS:
        assert _spec_schema()["properties"][key]["type"] == "object", key


def test_the_exactly_one_rule_and_its_message_list_every_backend() -> None:
    rule = _one_of_rule()
    assert re.findall(r"has\(self\.(\w+)\)", rule["rule"]) == list(BACKEND_KEYS)
    listed = re.search(r"\(([^)]*)\)", rule["message"])
    assert listed is not None, rule["message"]
    assert [name.strip() for name in listed.group(1).split(",")] == list(BACKEND_KEYS)


def test_the_spec_description_lists_every_backend() -> None:
    description = " ".join(_spec_schema()["description"].split())
    listed = re.search(r"exactly one backend block \(([^)]*)\)", description)
    assert listed is not None, description
    assert re.split(r",\s*|\s+or\s+", listed.group(1)) == list(BACKEND_KEYS)


def test_each_sdk_backend_has_its_extra_and_all_includes_it() -> None:
    extras = _extras()
    (everything,) = extras["all"]
    in_all = set(re.fullmatch(r"flowstore\[([^\]]*)\]", everything).group(1).split(","))  # type: ignore[union-attr]
    for row in BACKENDS:
        if row.extra is not None:
            assert extras.get(row.extra), f"backend {row.key}: no extra {row.extra!r} in pyproject.toml"
            assert row.extra in in_all, f"backend {row.key}: extra {row.extra!r} is not in flowstore[all]"
    backend_extras = {row.extra for row in BACKENDS if row.extra}
    assert set(extras) - NON_BACKEND_EXTRAS == backend_extras  # no extra left from a removed backend
    assert in_all <= backend_extras | NON_BACKEND_EXTRAS


def test_the_resources_page_tables_every_backend() -> None:
    page = (ROOT / "docs" / "resources.md").read_text()
    section = page.split("## FlowStorage", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert rows == list(BACKEND_KEYS)
