"""The CRD sources (crds/*.yaml) as files: every field documented (`kubectl explain` reads these
descriptions), and the chart's copy generated from them (`make crds`). No cluster needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
HELM_CRD_DIR = ROOT / "helm" / "flowstore-operator" / "crds"
CRD_FILES = ["flowstore.dev_flowstorages.yaml", "flowstore.dev_storedflows.yaml"]


def test_helm_chart_crds_identical_to_sources() -> None:
    for name in CRD_FILES:
        assert (HELM_CRD_DIR / name).read_bytes() == (CRD_DIR / name).read_bytes(), (
            f"helm/flowstore-operator/crds/{name} differs from crds/{name}: run `make crds` (the chart's copy is "
            "generated, never edited)"
        )


def _undocumented(schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths of every property under `schema` (recursively) without a non-empty description."""
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        if not str(prop.get("description", "")).strip():
            yield here
        yield from _undocumented(prop, here)
    if isinstance(schema.get("items"), dict):
        yield from _undocumented(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _undocumented(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", CRD_FILES)
def test_every_field_is_documented(name: str) -> None:
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            schema = root["properties"][part]
            assert str(schema.get("description", "")).strip(), f"{part} has no description"
            # Backends, sources and status fields all have nested properties: a sanity floor.
            assert len(list(_walk_names(schema))) > 5
            missing = list(_undocumented(schema, f"{version['name']}.{part}"))
            assert not missing, f"{name}: fields without a description: {missing}"


def _walk_names(schema: dict[str, Any]) -> Iterator[str]:
    for name, prop in schema.get("properties", {}).items():
        yield name
        yield from _walk_names(prop)
        if isinstance(prop.get("items"), dict):
            yield from _walk_names(prop["items"])


def _status_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def _spec_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def test_every_field_the_operator_writes_in_an_artifact_is_in_the_schema() -> None:
    """The API server refuses (422) or drops what the schema does not know: a field of
    status.artifact missing there is a status no flow can reach."""
    from flowstore.api.status import Artifact
    from flowstore.artifacts.loading import FORMATS

    full = Artifact(url="u", digest="sha256:" + "a" * 64, size=1, format="bundle", source_digest="sha256:" + "b" * 64,
                    inputs_digest="sha256:" + "c" * 64, last_update_time="2026-01-01T00:00:00Z",
                    storage_state={"x": 1}, signature="hmac-sha256:00", file_name="f.py", entrypoint="m.py:flow",
                    file_count=3)
    schema = _status_schema("flowstore.dev_storedflows.yaml")["properties"]["artifact"]
    assert set(full.to_status()) <= set(schema["properties"]), set(full.to_status()) - set(schema["properties"])
    assert schema["properties"]["format"]["enum"] == list(FORMATS)


def test_every_field_of_the_revision_records_is_in_the_schema() -> None:
    """status.history entries, status.retired, status.latest: what api/history.py writes."""
    from flowstore.api.history import History, Retired, Revision
    from flowstore.api.status import Artifact

    digest = "sha256:" + "a" * 64
    artifact = Artifact(url="u", digest=digest, size=1, format="pickle", source_digest=digest, inputs_digest=digest,
                        last_update_time="2026-01-01T00:00:00Z", storage_state={"x": 1}, signature="hmac-sha256:00",
                        file_name="f.py", entrypoint="m.py:flow", file_count=3, versions={"python": "3.11"},
                        revision=2, designation=5)
    entry = Revision(revision=2, location="l", artifact=artifact, superseded_at="2026-01-01T00:00:00Z",
                     commit="c" * 40, image_name="r/i", image_digest=digest)
    history = History(entries=[entry], last_revision=2, retired=[Retired.of(entry, "2026-01-01T00:00:00Z")],
                      current=2, designation=5, storage="sha256:0123456789abcdef")
    status: dict[str, Any] = {}
    history.write(status, latest=entry)
    schema = _status_schema("flowstore.dev_storedflows.yaml")["properties"]
    assert set(status) <= set(schema), set(status) - set(schema)
    assert set(entry.to_status()) <= set(schema["history"]["items"]["properties"])
    assert set(status["retired"][0]) <= set(schema["retired"]["items"]["properties"])
    assert set(status["latest"]) <= set(schema["latest"]["properties"])
    assert {"revision", "designation"} <= set(schema["artifact"]["properties"])


def test_the_revision_records_are_bounded_in_the_schema_as_the_core_bounds_them() -> None:
    """The API server refuses a longer history than the core ever writes: the largest limit plus
    the current and the newest revision when a pin holds an older one (revisions.trim keeps
    both); status.retired as History keeps it."""
    from flowstore.api.history import MAX_HISTORY, MAX_RETIRED

    schema = _status_schema("flowstore.dev_storedflows.yaml")["properties"]
    spec = _spec_schema("flowstore.dev_storedflows.yaml")["properties"]
    assert spec["revisionHistoryLimit"]["maximum"] == MAX_HISTORY
    assert schema["history"]["maxItems"] == MAX_HISTORY + 2
    assert schema["retired"]["maxItems"] == MAX_RETIRED


def test_every_status_field_the_core_writes_is_in_the_schema() -> None:
    written = {"observedGeneration", "conditions", "location", "artifact", "storage", "labels", "flowName",
               "lastHandledReconcileAt", "git", "image", "storing", "superseded", "history", "lastRevision",
               "latest", "retired", "historyStorage"}
    assert written <= set(_status_schema("flowstore.dev_storedflows.yaml")["properties"])
    assert {"observedGeneration", "conditions", "labels", "flows", "flowCount", "storage",
            "lastHandledReconcileAt"} <= set(_status_schema("flowstore.dev_flowstorages.yaml")["properties"])
