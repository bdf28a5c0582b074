"""The local cloud itself: a real kube-apiserver (with RBAC and TokenRequest), a real S3,
GCS (fake-gcs-server) and Azure Blob (Azurite), each through its real SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from localcloud.cloud import Cloud
from tests.helpers.kube import kubectl
from tests.helpers.localcloud import LOCALCLOUD, ROOT

# The GCS and Azure fixtures live here until they move to conftest.py.


@pytest.fixture(scope="module")
def kube_api(kube_env: dict[str, str]):
    import kubernetes

    return kubernetes.config.new_client_from_config(config_file=kube_env["KUBECONFIG"])


def test_apiserver_reports_its_real_version(kube_api) -> None:
    from kubernetes import client

    pinned = Cloud.from_environ().kube_version  # v1.37.2
    info = client.VersionApi(kube_api).get_code()
    assert info.git_version == pinned
    assert (info.major, info.minor) == ("1", pinned.split(".")[1])
    assert int(info.minor) >= 35  # image volumes (volumes[].image) on by default


def test_admin_can_create_a_namespace(kube_api) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        assert core.read_namespace(name).status.phase == "Active"
    finally:
        core.delete_namespace(name)


def test_service_account_token_is_denied_by_rbac(kube_api, namespace: str) -> None:
    """A real TokenRequest token authenticates as the SA and RBAC refuses it; the same
    request as admin succeeds, so the 403 is authorization, not a broken token."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    kubectl("create", "serviceaccount", "probe", "-n", namespace)
    token = kubectl("create", "token", "probe", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2  # a signed JWT

    # Admin may list secrets there.
    client.CoreV1Api(kube_api).list_namespaced_secret(namespace)

    cfg = client.Configuration()
    cfg.host = kube_api.configuration.host
    cfg.ssl_ca_cert = kube_api.configuration.ssl_ca_cert
    cfg.verify_ssl = kube_api.configuration.verify_ssl
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as sa_api:
        who = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
        assert who.status.user_info.username == f"system:serviceaccount:{namespace}:probe"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    assert "cannot list resource" in denied.value.body


def test_kubectl_uses_the_exported_kubeconfig(kube_env: dict[str, str]) -> None:
    out = subprocess.run(
        ["kubectl", "get", "ns", "default", "-o", "name"],
        capture_output=True,
        text=True,
        check=True,
        env=kube_env,
    ).stdout
    assert out.strip() == "namespace/default"


def test_s3_put_and_get(s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    assert s3_endpoint == os.environ["FLOWSTORE_S3_ENDPOINT"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    body = os.urandom(1024)
    put = s3.put_object(Bucket=s3_bucket, Key="dir/flow.bin", Body=body)
    got = s3.get_object(Bucket=s3_bucket, Key="dir/flow.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]


def test_gcs_put_and_get(gcs_endpoint: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_endpoint
    gcs = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_endpoint}
    )
    bucket = gcs.create_bucket(f"flows-{uuid.uuid4().hex[:12]}")
    body = os.urandom(1024)
    bucket.blob("dir/flow.bin").upload_from_string(body)
    assert gcs.bucket(bucket.name).blob("dir/flow.bin").download_as_bytes() == body
    assert [b.name for b in gcs.list_blobs(bucket.name)] == ["dir/flow.bin"]


def test_azure_blob_put_and_get(azure_connection_string: str) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azure_connection_string)
    assert service.url.rstrip("/") == os.environ["FLOWSTORE_AZURE_BLOB_ENDPOINT"]
    container = service.create_container(f"flows-{uuid.uuid4().hex[:12]}")
    body = os.urandom(1024)
    container.upload_blob("dir/flow.bin", body)
    assert container.download_blob("dir/flow.bin").readall() == body
    assert [b.name for b in container.list_blobs()] == ["dir/flow.bin"]


def test_docker_engine_builds_and_pushes_to_the_registry_with_auth(docker_env: dict[str, str]) -> None:
    """The Engine API (podman) builds FROM the local base image with a RUN step and pushes to the
    htpasswd registry; a wrong password is refused in the push stream."""
    import io
    import tarfile
    import uuid

    import docker
    import requests

    client = docker.DockerClient(base_url=docker_env["docker_host"])
    dockerfile = f"FROM {docker_env['base_image']}\nRUN python3 -c 'print(6 * 7)' > /answer\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    tag = f"{docker_env['registry']}/localcloud/check:{uuid.uuid4().hex[:8]}"
    stream = list(client.api.build(fileobj=context, custom_context=True, tag=tag, decode=True, rm=True))
    assert not [c for c in stream if "errorDetail" in c], stream
    good = {"username": docker_env["username"], "password": docker_env["password"]}
    pushed = list(client.api.push(tag, auth_config=good, stream=True, decode=True))
    assert not [c for c in pushed if "errorDetail" in c], pushed
    refused = list(client.api.push(tag, auth_config={**good, "password": "wrong"}, stream=True, decode=True))
    assert any("unauthorized" in str(c.get("errorDetail", "")) for c in refused), refused
    repo, _, ref = tag.partition("/")[2].partition(":")
    manifest = requests.get(f"http://{docker_env['registry']}/v2/{repo}/manifests/{ref}", timeout=10,
                            auth=(docker_env["username"], docker_env["password"]),
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                                               "application/vnd.oci.image.manifest.v1+json"})
    assert manifest.status_code == 200 and manifest.headers["Docker-Content-Digest"].startswith("sha256:")
    assert requests.get(f"http://{docker_env['registry']}/v2/", timeout=10).status_code == 401


def test_a_private_cloud_starts_stops_and_goes_away(tmp_path: Path) -> None:
    """The commands end to end on a second local cloud (its own state directory): `up` starts
    and then reuses, `stop` keeps the port for `start`, `env` and `status` say what runs, and
    `down` leaves nothing of it."""
    state_dir = tmp_path / "cloud"
    env = {**os.environ, "FLOWSTORE_LOCALCLOUD_DIR": str(state_dir)}

    def localcloud(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, str(LOCALCLOUD), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"localcloud {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done

    def status() -> dict[str, tuple[str, str, str]]:
        return {line.split()[0]: (line.split()[1], line.split()[2], line.split()[3])
                for line in localcloud("status").stdout.splitlines()}

    localcloud("up", "webhook")
    try:
        pid, port, up = status()["webhook"]
        assert up == "up" and pid != "pid=-" and port != "port=-"
        exports = localcloud("env").stdout
        assert exports.startswith(f"export FLOWSTORE_WEBHOOK_URL=http://127.0.0.1:{port.removeprefix('port=')}\n")
        assert "KUBECONFIG" not in exports  # only what runs in this cloud
        assert "webhook already running" in localcloud("up", "webhook").stderr
        assert status()["webhook"] == (pid, port, "up")

        localcloud("stop", "webhook")
        assert status()["webhook"] == ("pid=-", port, "down")
        assert localcloud("env").stdout == ""
        localcloud("start", "webhook")
        new_pid, same_port, up = status()["webhook"]
        assert (same_port, up) == (port, "up") and new_pid != pid
    finally:
        localcloud("down")
    assert not state_dir.exists()
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_names(p, state_dir)]


def _cmdline_names(proc: Path, path: Path) -> bool:
    try:
        return str(path) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_env_exports_the_names_agents_read() -> None:
    """An agent reads its credentials from its own environment under the names the storages use
    (WEBHOOK_TOKEN in the examples' Webhook template, GIT_USERNAME / GIT_PASSWORD for git): the
    local cloud exports those, beside its own FLOWSTORE_* names, so `flowstore run` works in a
    shell set up as the README says."""
    from tests.helpers.localcloud import localcloud_env

    env = localcloud_env("webhook", "git")
    assert env["WEBHOOK_TOKEN"] == env["FLOWSTORE_WEBHOOK_TOKEN"] and env["WEBHOOK_TOKEN"]
    assert (env["GIT_USERNAME"], env["GIT_PASSWORD"]) == (env["FLOWSTORE_GIT_USERNAME"], env["FLOWSTORE_GIT_PASSWORD"])
