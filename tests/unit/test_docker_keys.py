"""A StoredFlow's key in a Docker storage (issue 20, item 7): the image is shared by every flow
of the FlowStorage, so a key may place a flow only in the storage's flows directory, never over
the image's Python, its site-packages or another flow's files. Checked where the key becomes a
location, and again where the image's flows are laid out (locations read back from statuses
are not trusted either). Pure: no daemon, no registry."""

from __future__ import annotations

import pytest

from flowstore.storage import InvalidConfig
from flowstore.storage.docker import Docker
from flowstore.storage.docker import dockerfile as df


def spec_storage(**config: object) -> Docker:
    storage = Docker.from_config({"imageName": "flows", **config})
    assert isinstance(storage, Docker)
    return storage


@pytest.mark.parametrize("key", [
    "/usr/local/lib/python3.11/site-packages/sitecustomize.py",
    "/usr/local/bin/python3",
    "/opt/prefect/flows/../../../usr/local/bin/python3",
    "../lib/helper.py",
    "etl.prefect",  # relative to the flow directory, not in its flows/
    "/opt/prefect/flowsx/etl.prefect",
    "/opt/flowstore/runtime/flowstore/__init__.py",
])
def test_a_key_outside_the_flows_directory_is_refused(key: str) -> None:
    with pytest.raises(InvalidConfig, match="outside this storage's flows directory /opt/prefect/flows/"):
        spec_storage().location_for("etl", key=key)


@pytest.mark.parametrize(("key", "location"), [
    ("flows/etl.prefect", "/opt/prefect/flows/etl.prefect"),
    ("/opt/prefect/flows/team/etl.py", "/opt/prefect/flows/team/etl.py"),
])
def test_a_key_inside_it_is_used(key: str, location: str) -> None:
    assert spec_storage().location_for("etl", key=key) == location
    assert spec_storage(flowDirectory="/srv/flows").location_for("etl", key="flows/x.py") == "/srv/flows/flows/x.py"


def test_the_seeds_library_keeps_its_freedom() -> None:
    """A flow's author building their own image (the class, no FlowStorage) may put it anywhere."""
    assert Docker(image_name="flows").location_for("etl", key="/app/etl.prefect") == "/app/etl.prefect"


def flow(name: str, location: str, kind: str = "pickle") -> df.FlowFile:
    return df.FlowFile(name=name, location=location, data=b"", kind=kind)


def test_the_image_layout_refuses_what_a_status_could_bring_back() -> None:
    root = "/opt/prefect/flows"
    ok = df.ImageSpec(flows=[flow("a", f"{root}/a.prefect")], flow_root=root)
    assert [f.name for f in df.checked_flows(ok)] == ["a"]
    outside = df.ImageSpec(flows=[flow("a", "/usr/local/bin/python3")], flow_root=root)
    with pytest.raises(df.DockerfileError, match="outside the flows directory"):
        df.checked_flows(outside)
    into_a_bundle = df.ImageSpec(flows=[flow("b", f"{root}/b.tar.gz", "bundle"),
                                        flow("a", f"{root}/b/helpers.py")], flow_root=root)
    with pytest.raises(df.DockerfileError, match="inside the directory of flow 'b'"):
        df.checked_flows(into_a_bundle)
