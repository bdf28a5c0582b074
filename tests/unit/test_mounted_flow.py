"""A flow mounted from its OCI image (flowstore.mounted): the check a run makes of the mount (no
credentials, no API, no network), the pull step that copies it out, and what `flowstore locate -o
pod-volume | prefect-job-variables` prints (flowstore.oci_volumes). The mounts here are the image's
own layer, unpacked as containerd unpacks it."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstore import mounted, oci_volumes
from flowstore.storage.base import sha256_hex
from flowstore.storage.oci import image as oci_image
from flowstore.storage.oci.storage import BUNDLE_LOCATION

FILES = {"flow.py": b"from helpers import VALUE\nprint('ran', VALUE)\n", "helpers.py": b"VALUE = 42\n"}
ARTIFACT = FILES["flow.py"]
DIGEST = "sha256:" + sha256_hex(ARTIFACT)


def unpack_image(root: Path, files: dict[str, bytes] = FILES, digest: str = DIGEST) -> Path:
    """The image's layer, extracted as a runtime mounts it."""
    image = oci_image.build_flow_image(files, stored_flow="data/etl", flow_digest=digest)
    with tarfile.open(fileobj=io.BytesIO(image.layer), mode="r:") as tar:
        tar.extractall(root, filter="data")
    return root


def test_the_constants_are_the_images() -> None:
    assert mounted.MANIFEST_PATH == oci_image.MANIFEST_PATH
    assert mounted.MANIFEST_SCHEMA == oci_image.MANIFEST_SCHEMA
    assert mounted.BUNDLE_LOCATION == BUNDLE_LOCATION


def test_a_good_mount_is_checked_and_copied_out_with_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    root = unpack_image(tmp_path / "mnt")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the mounted-flow step opened a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    os.chmod(root, 0o500)  # read-only, as the volume is
    out = mounted.use_mounted_flow(str(root), DIGEST)
    assert out["digest"] == DIGEST and out["storedflow"] == "data/etl"
    directory = Path(out["directory"])
    assert directory == tmp_path / "data_etl"
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == FILES
    # again: a fresh copy, replacing the last
    (directory / "left-over.txt").write_text("x")
    assert not (Path(mounted.use_mounted_flow(str(root), DIGEST)["directory"]) / "left-over.txt").exists()


def test_an_empty_mount_fails_loudly(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    with pytest.raises(mounted.MountError, match=r"is empty: the image volume was not mounted.*--fallback init"):
        mounted.check_mount(tmp_path / "mnt", DIGEST)
    with pytest.raises(mounted.MountError, match="no such directory"):
        mounted.check_mount(tmp_path / "absent", DIGEST)


def test_another_revision_is_refused(tmp_path: Path) -> None:
    root = unpack_image(tmp_path / "mnt")
    other = "sha256:" + "0" * 64
    with pytest.raises(mounted.MountError, match=f"not the recorded {other}"):
        mounted.check_mount(root, other)


def test_an_altered_or_extra_file_is_refused(tmp_path: Path) -> None:
    root = unpack_image(tmp_path / "a")
    (root / "helpers.py").write_bytes(b"VALUE = 666\n")
    with pytest.raises(mounted.MountError, match=r"helpers.py has digest .* the mount was altered"):
        mounted.check_mount(root, DIGEST)
    root = unpack_image(tmp_path / "b")
    (root / "sitecustomize.py").write_bytes(b"import os\n")
    with pytest.raises(mounted.MountError, match=r"holds sitecustomize.py, which its manifest does not list"):
        mounted.check_mount(root, DIGEST)
    root = unpack_image(tmp_path / "c")
    (root / "helpers.py").unlink()
    (root / "helpers.py").symlink_to("/etc/hostname")
    with pytest.raises(mounted.MountError, match=r"helpers.py"):
        mounted.check_mount(root, DIGEST)


def test_a_forged_manifest_is_refused(tmp_path: Path) -> None:
    root = unpack_image(tmp_path / "mnt")
    doc = json.loads((root / mounted.MANIFEST_PATH).read_text())
    doc["files"]["../../etc/passwd"] = "sha256:" + "1" * 64
    (root / mounted.MANIFEST_PATH).write_text(json.dumps(doc))
    with pytest.raises(mounted.MountError, match="not a flowstore file manifest"):
        mounted.check_mount(root, DIGEST)


def test_the_check_command_exits_non_zero_on_a_bad_mount(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert mounted.main(["check", str(tmp_path / "empty"), DIGEST]) == 1
    assert "flowstore: " in capsys.readouterr().err
    assert mounted.main(["check", str(unpack_image(tmp_path / "mnt")), DIGEST]) == 0
    assert "data/etl" in capsys.readouterr().out


def args(**over: Any) -> argparse.Namespace:
    base = {"mount_path": "/flow", "volume_name": "flow", "pull_secret": None, "fallback": "none", "init_image": None}
    return argparse.Namespace(**{**base, **over})


STORAGE = {"type": "OCI", "repository": "registry.example.com/flows/etl", "plainHTTP": False,
           "imageDigest": "sha256:" + "ab" * 32}


def test_pod_volume_is_pinned_by_digest() -> None:
    text = oci_volumes.render("pod-volume", STORAGE, DIGEST, "flow.py", "StoredFlow data/etl", args(pull_secret="pull"))
    doc = yaml.safe_load(text)
    assert doc == {
        "volumes": [{"name": "flow", "image": {"reference": f"registry.example.com/flows/etl@{STORAGE['imageDigest']}",
                                                "pullPolicy": "IfNotPresent"}}],
        "imagePullSecrets": [{"name": "pull"}],
        "volumeMounts": [{"name": "flow", "mountPath": "/flow", "readOnly": True}]}
    assert f"python3 -m flowstore.mounted check /flow {DIGEST}" in text


def test_prefect_job_variables_and_the_pull_step() -> None:
    doc = yaml.safe_load(oci_volumes.render("prefect-job-variables", STORAGE, DIGEST, "flow.py", "StoredFlow data/etl",
                                            args(mount_path="/opt/flow")))
    assert doc["job_variables"]["volume_mounts"] == [{"name": "flow", "mountPath": "/opt/flow", "readOnly": True}]
    assert doc["job_variables"]["volumes"][0]["image"]["reference"].endswith("@" + STORAGE["imageDigest"])
    assert doc["pull"] == [{"flowstore.prefect.use_mounted_flow": {"path": "/opt/flow", "digest": DIGEST}}]


def test_the_prefect_step_logs_to_the_flow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """flowstore.prefect.use_mounted_flow (the printed step's dotted path) is the same check, its
    outcome logged on ``prefect.flow_runs`` with the run's id (what Prefect ships to its API)."""
    from flowstore import prefect

    root = unpack_image(tmp_path / "mnt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "4f7c0d4e-0000-4000-8000-000000000001")
    with caplog.at_level("INFO", logger="prefect.flow_runs"):
        out = prefect.use_mounted_flow(str(root), DIGEST)
        other = "sha256:" + "0" * 64
        with pytest.raises(mounted.MountError, match=f"not the recorded {other}"):
            prefect.use_mounted_flow(str(root), other)
    assert out["directory"] == str(tmp_path / "data_etl") and out["storedflow"] == "data/etl"
    records = [(r.levelname, r.getMessage(), getattr(r, "flow_run_id", None)) for r in caplog.records]
    assert records[0][0] == "INFO" and f"running data/etl {DIGEST}, mounted at {root} and checked" in records[0][1]
    assert records[1][0] == "ERROR" and f"not the recorded {other}" in records[1][1]
    assert {r[2] for r in records} == {"4f7c0d4e-0000-4000-8000-000000000001"}


def test_the_init_fallback_pulls_by_digest_into_an_empty_dir() -> None:
    with pytest.raises(oci_volumes.NotAnImageVolume, match="--init-image"):
        oci_volumes.render("pod-volume", STORAGE, DIGEST, "flow.py", "x", args(fallback="init"))
    doc = yaml.safe_load(oci_volumes.render("pod-volume", {**STORAGE, "plainHTTP": True}, DIGEST, "flow.py", "x",
                                            args(fallback="init", init_image="flowstore:1", pull_secret="pull")))
    (init,) = doc["initContainers"]
    assert init["command"] == ["python3", "-m", "flowstore.mounted", "pull",
                               f"registry.example.com/flows/etl@{STORAGE['imageDigest']}", DIGEST, "/flow",
                               "--plain-http"]
    assert {"name": "flow", "emptyDir": {}} in doc["volumes"]
    assert "imagePullSecrets" not in doc  # the init container pulls, with the Secret mounted as its DOCKER_CONFIG


def test_other_storages_are_refused() -> None:
    with pytest.raises(oci_volumes.NotAnImageVolume, match="only an oci FlowStorage"):
        oci_volumes.render("pod-volume", {"type": "S3", "bucket": "b"}, DIGEST, "k", "StoredFlow data/etl", args())


#: the shape of Prefect's default Kubernetes base job template (prefect-kubernetes 0.8.0,
#: `prefect work-pool get-default-base-job-template --type kubernetes`), cut down;
#: tests/cluster/test_prefect_kubernetes.py changes the real one and runs a Job with it
TEMPLATE = {
    "job_configuration": {
        "command": "{{ command }}", "env": "{{ env }}", "namespace": "{{ namespace }}",
        "job_manifest": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
            "parallelism": 1, "restartPolicy": "Never", "serviceAccountName": "{{ service_account_name }}",
            "containers": [{"name": "prefect-job", "image": "{{ image }}", "env": "{{ env }}",
                            "args": "{{ command }}"}],
        }}}}},
    "variables": {"type": "object", "properties": {"image": {"type": "string"}, "namespace": {"type": "string"}}},
}


def test_the_base_job_template_gets_the_job_variables_placed() -> None:
    out = oci_volumes.prefect_base_job_template(TEMPLATE)
    pod = out["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert (pod["volumes"], pod["imagePullSecrets"], pod["initContainers"]) == (
        "{{ volumes }}", "{{ image_pull_secrets }}", "{{ init_containers }}")
    assert pod["containers"][0]["volumeMounts"] == "{{ volume_mounts }}"
    properties = out["variables"]["properties"]
    assert {k: (v["type"], v["default"]) for k, v in properties.items() if k not in ("image", "namespace")} == {
        k: ("array", []) for k in ("volumes", "volume_mounts", "image_pull_secrets", "init_containers")}
    assert "volumes" not in TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]  # a copy
    assert oci_volumes.prefect_base_job_template(out) == out  # again: nothing changes
    # every job variable -o prefect-job-variables can print has its place
    doc = yaml.safe_load(oci_volumes.render("prefect-job-variables", STORAGE, DIGEST, "flow.py", "x",
                                            args(fallback="init", init_image="flowstore:1", pull_secret="pull")))
    assert set(doc["job_variables"]) <= set(properties)


def test_a_template_that_sets_the_fields_itself_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = json.loads(json.dumps(TEMPLATE))
    mine["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["volumes"] = [{"name": "cache"}]
    refused = re.escape("already sets volumes; merge {{ volumes }} into it by hand")
    with pytest.raises(oci_volumes.TemplateError, match=refused):
        oci_volumes.prefect_base_job_template(mine)
    with pytest.raises(oci_volumes.TemplateError, match="not a Prefect Kubernetes base job template"):
        oci_volumes.prefect_base_job_template({"variables": {}})
    # the command: a file in, JSON out; bad input is a message and exit status 1
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATE))
    assert oci_volumes.main(["prefect-base-job-template", str(tmp_path / "t.json")]) == 0
    assert json.loads(capsys.readouterr().out) == oci_volumes.prefect_base_job_template(TEMPLATE)
    (tmp_path / "bad.json").write_text("[1]")
    assert oci_volumes.main(["prefect-base-job-template", str(tmp_path / "bad.json")]) == 1
    assert "not a JSON object" in capsys.readouterr().err
