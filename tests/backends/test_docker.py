"""Docker storage against real components (LOCAL-CLOUD.md): images are built by the Docker
Engine API (podman system service), pushed to a real registry (Debian's docker-registry with
htpasswd auth) and read back through the registry HTTP API without the daemon.

Each flow is loaded in the image by the healthcheck container at build time, loaded back and
run in this process from the registry bytes, and run in a container of the pushed image by
`get_env_runner`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore.artifacts import envelope
from flowstore.flow import Flow
from flowstore.storage import docker as docker_mod
from flowstore.storage.docker import (
    BaseImageNotFound,
    BuiltImage,
    DaemonUnavailable,
    DependencyInstallFailed,
    Docker,
    DockerfileInvalid,
    HealthcheckFailed,
    ImageFlow,
    RegistryUnavailable,
)
from flowstore.storage.docker import daemon as docker_daemon
from flowstore.storage.docker import dockerfile as df
from flowstore.storage.docker.daemon import Daemon
from flowstore.storage.docker.layers import MEDIA_DOCKER_MANIFEST, ImageAssemblyError, assemble, file_layer
from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.errors import AuthFailed, IntegrityError, InvalidConfig, NotFound
from tests.helpers.net import free_port
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.tls_certs import Authority, tls_daemon

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                   "application/vnd.oci.image.manifest.v1+json")


def _module_level_function() -> str:
    """Pickled *by reference* (tests.backends.test_docker), so it cannot load in the image."""
    return "unreachable"


def script_source(flow_name: str, result: str) -> bytes:
    return (f"from flowstore.flow import Flow\n\n\ndef main():\n    return {result!r}\n\n\n"
            f"flow = Flow({flow_name!r}, main)\n").encode()


def pickled_flow(flow_name: str, result: str) -> bytes:
    def main() -> str:  # a local function: cloudpickle pickles it by value
        return result

    return envelope.dumps(Flow(flow_name, main))


def make_storage(docker_env: dict[str, str], **kwargs: Any) -> Docker:
    kwargs.setdefault("registry_url", docker_env["registry"])
    kwargs.setdefault("image_name", f"test/flows-{uuid.uuid4().hex[:10]}")
    kwargs.setdefault("registry_username", docker_env["username"])
    kwargs.setdefault("registry_password", docker_env["password"])
    kwargs.setdefault("base_url", docker_env["docker_host"])
    if "dockerfile" not in kwargs:
        kwargs.setdefault("base_image", docker_env["base_image"])
    return Docker(**kwargs)


class Registry:
    """Direct registry HTTP API calls (requests, basic auth): independent of flowstore's client."""

    def __init__(self, docker_env: dict[str, str]) -> None:
        self.base = f"http://{docker_env['registry']}"
        self.auth = (docker_env["username"], docker_env["password"])

    def head_digest(self, repo: str, tag: str) -> str:
        resp = requests.head(f"{self.base}/v2/{repo}/manifests/{tag}", auth=self.auth,
                             headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
        assert resp.status_code == 200, resp.status_code
        return str(resp.headers["Docker-Content-Digest"])

    def manifest(self, repo: str, ref: str) -> dict[str, Any]:
        resp = requests.get(f"{self.base}/v2/{repo}/manifests/{ref}", auth=self.auth,
                            headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def blob(self, repo: str, digest: str) -> bytes:
        resp = requests.get(f"{self.base}/v2/{repo}/blobs/{digest}", auth=self.auth, timeout=60)
        assert resp.status_code == 200, resp.text
        return resp.content

    def config(self, repo: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return dict(json.loads(self.blob(repo, manifest["config"]["digest"])))

    def layer_files(self, repo: str, digest: str) -> dict[str, bytes]:
        """Regular files of a layer (path without leading slash -> content)."""
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(self.blob(repo, digest)))) as tar:
            return {m.name.lstrip("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                    for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def registry(docker_env: dict[str, str]) -> Registry:
    return Registry(docker_env)


# --------------------------------------------------------------------------- one image, many checks
class Built:
    def __init__(self, storage: Docker, flows: list[ImageFlow], image: BuiltImage, seconds: float,
                 results: dict[str, str]) -> None:
        self.storage, self.flows, self.image, self.seconds = storage, flows, image, seconds
        self.results = results  # flow name -> what its run() returns


@pytest.fixture(scope="module")
def built(docker_env: dict[str, str]) -> Built:
    """Three flows (pickle, script, pickle) built into one image and pushed."""
    token = uuid.uuid4().hex
    storage = make_storage(docker_env, env_vars={"FLOW_ENV": "test", "PYTHONPATH": "$PYTHONPATH:/modules"},
                           files={"/modules/helper.py": b"VALUE = 42\n"})
    flows = [
        ImageFlow("alpha", storage.location_for("alpha"), pickled_flow("alpha", f"alpha {token}")),
        ImageFlow("beta", "/opt/prefect/flows/beta.py", script_source("beta", f"beta {token}")),
        ImageFlow("gamma", storage.location_for("gamma"), pickled_flow("gamma", f"gamma {token}")),
    ]
    start = time.monotonic()
    image = storage.build_image(flows)
    results = {name: f"{name} {token}" for name in ("alpha", "beta", "gamma")}
    return Built(storage, flows, image, time.monotonic() - start, results)


def test_build_push_digest_is_the_registrys(built: Built, registry: Registry) -> None:
    image = built.image
    assert image.pushed is True
    assert image.name == built.storage.image_repository
    assert image.tag.startswith("fs-")  # derived from the inputs digest
    assert image.digest == registry.head_digest(built.storage.repository, image.tag)
    assert "flowstore-healthcheck: 3 flows load" in image.log_tail
    print(f"build+push of 3 flows: {built.seconds:.1f}s")


def test_manifest_layers_env_and_labels(built: Built, registry: Registry) -> None:
    repo = built.storage.repository
    manifest = registry.manifest(repo, built.image.digest)
    config = registry.config(repo, manifest)
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    assert env["FLOW_ENV"] == "test"
    assert env["PYTHONPATH"] == "/opt/flowstore/runtime:/modules"  # the user's value extends the runtime's
    labels = config["config"]["Labels"]
    assert json.loads(labels[df.LABEL_FLOWS]) == {f.name: f.location for f in built.flows}
    assert len(labels[df.LABEL_INPUTS]) == 64
    # the base image's layers (..., helper file, runtime), then one layer per flow, sorted by location
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert len(config["rootfs"]["diff_ids"]) == len(layers)
    contents = [registry.layer_files(repo, digest) for digest in layers]
    *_, helper, runtime, alpha, beta, gamma = [c for c in contents if c]
    assert helper == {"modules/helper.py": b"VALUE = 42\n"}
    assert "opt/flowstore/runtime/flowstore/flow.py" in runtime
    assert "opt/flowstore/runtime/cloudpickle/__init__.py" in runtime
    assert "opt/flowstore/healthcheck.py" in runtime
    assert not any("__pycache__" in name for name in runtime)
    by_name = {f.name: f for f in built.flows}
    assert alpha == {"opt/prefect/flows/alpha.prefect": by_name["alpha"].data}  # one layer per flow
    assert beta == {"opt/prefect/flows/beta.py": by_name["beta"].data}
    assert gamma == {"opt/prefect/flows/gamma.prefect": by_name["gamma"].data}
    assert not any("opt/flowstore/checks/" in name and not name.endswith("README") for c in contents for name in c)
    # each flow layer's diff ID is the digest of its uncompressed tar; history names the flows
    for digest, diff_id in zip(layers[-3:], config["rootfs"]["diff_ids"][-3:], strict=True):
        assert "sha256:" + hashlib.sha256(gzip.decompress(registry.blob(repo, digest))).hexdigest() == diff_id
    assert [h.get("comment") for h in config["history"][-3:]] == ["flow alpha", "flow beta", "flow gamma"]


def test_read_flow_and_get_flow_without_the_daemon(built: Built, docker_env: dict[str, str]) -> None:
    # a fresh storage as an agent rebuilds it: serialized config + StoredFlow state, a daemon that is gone
    doc = built.storage.to_status()
    assert docker_env["password"] not in json.dumps(doc)
    assert doc["imageDigest"] == built.image.digest and doc["registryURL"] == docker_env["registry"]
    secret = {".dockerconfigjson": json.dumps({"auths": {docker_env["registry"]: {"auth": base64.b64encode(
        f"{docker_env['username']}:{docker_env['password']}".encode()).decode()}}})}
    agent = Docker.from_config({**doc, "daemonURL": f"tcp://127.0.0.1:{free_port()}"}, credentials=secret)
    agent.restore_state({"imageDigest": built.image.digest, "imageName": built.image.name,
                         "imageTag": built.image.tag})
    for flow in built.flows:
        data = agent.read_flow(built.image.digest, flow.location)
        assert data == flow.data
        loaded = agent.get_flow(flow.location, sha256=hashlib.sha256(flow.data).hexdigest(), flow_name=flow.name)
        assert loaded.name == flow.name
        assert loaded.run() == built.results[flow.name]
    with pytest.raises(NotFound):
        agent.read_flow(built.image.digest, "/opt/prefect/flows/missing.prefect")


def test_tampered_sha256_is_refused_before_loading(built: Built) -> None:
    flow = built.flows[0]
    with pytest.raises(IntegrityError):
        built.storage.get_flow(flow.location, sha256="0" * 64)


def test_same_inputs_skip_the_build(built: Built, docker_env: dict[str, str]) -> None:
    # the daemon is only reachable through a proxy that counts connections: none may be made
    host, port = docker_env["docker_host"].removeprefix("tcp://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port)).start()
    try:
        again = Docker(registry_url=docker_env["registry"], image_name=built.storage.image_name,
                       base_image=docker_env["base_image"], registry_username=docker_env["username"],
                       registry_password=docker_env["password"], base_url=f"tcp://127.0.0.1:{proxy.port}",
                       env_vars=built.storage.env_vars, files=built.storage.files)
        start = time.monotonic()
        image = again.build_image(list(built.flows))
        elapsed = time.monotonic() - start
    finally:
        proxy.stop()
    assert image.pushed is False
    assert (image.digest, image.tag) == (built.image.digest, built.image.tag)
    assert proxy.accepted == 0, "the daemon was contacted although the image already exists"
    assert elapsed < 5
    assert again.storage_state() == {"imageName": built.image.name, "imageTag": built.image.tag,
                                     "imageDigest": built.image.digest}


def test_changing_one_flow_changes_and_pushes_only_its_layer(built: Built, registry: Registry) -> None:
    storage = built.storage
    flows = list(built.flows)
    flows[1] = ImageFlow("beta", flows[1].location, script_source("beta", f"beta v2 {uuid.uuid4().hex}"))
    start = time.monotonic()
    image = storage.build_image(flows)
    print(f"rebuild after one flow changed: {time.monotonic() - start:.1f}s")
    assert image.pushed and image.digest != built.image.digest and image.tag != built.image.tag
    old_manifest = registry.manifest(storage.repository, built.image.digest)
    new_manifest = registry.manifest(storage.repository, image.digest)
    old = [layer["digest"] for layer in old_manifest["layers"]]
    new = [layer["digest"] for layer in new_manifest["layers"]]
    assert len(old) == len(new)
    beta_index = len(new) - 2  # ..., runtime, alpha, beta, gamma
    assert new[:beta_index] == old[:beta_index], "the layers below the changed flow are reused"
    assert new[beta_index + 1:] == old[beta_index + 1:], "the layers above the changed flow are reused"
    assert new[beta_index] != old[beta_index]
    assert registry.layer_files(storage.repository, new[beta_index]) == {"opt/prefect/flows/beta.py": flows[1].data}
    # what was sent: the changed layer, the new configuration and the manifest, nothing else
    raw_manifest = requests.get(f"{registry.base}/v2/{storage.repository}/manifests/{image.digest}",
                                auth=registry.auth, headers={"Accept": MANIFEST_ACCEPT}, timeout=30).content
    assert image.layers_pushed_bytes == (new_manifest["layers"][beta_index]["size"]
                                         + new_manifest["config"]["size"] + len(raw_manifest))
    assert storage.read_flow(image.digest, flows[2].location) == flows[2].data
    assert storage.get_flow(flows[1].location, flow_name="beta").run().startswith("beta v2 ")


def test_a_daemon_without_the_base_image_pulls_it_instead_of_building(docker_env: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    storage = make_storage(docker_env, env_vars={"FLOWSTORE_TEST": uuid.uuid4().hex})  # a base of its own
    flows = [ImageFlow("one", storage.location_for("one"), pickled_flow("one", "1"))]
    storage.build_image(flows)
    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto")
    base_ref = f"{storage.image_repository}:fs-base-{storage.plan(flows).base.inputs_digest[:32]}"
    pushed_base = api.inspect_image(base_ref)["Id"]
    for container in api.containers(filters={"label": f"{docker_mod.HEALTHCHECK_LABEL}={pushed_base}"}):
        api.remove_container(container["Id"], force=True)
    api.remove_image(base_ref, force=True)  # as on another node, or after the cache was pruned
    flows.append(ImageFlow("two", storage.location_for("two"), pickled_flow("two", "2")))

    def no_build(*args: Any) -> Any:
        raise AssertionError("the base image was built again instead of pulled")

    monkeypatch.setattr(Daemon, "build", no_build)
    image = storage.build_image(flows)
    assert "2 flows load" in image.log_tail
    assert api.inspect_image(base_ref)["Config"]["Labels"][df.LABEL_INPUTS] == storage.plan(flows).base.inputs_digest
    assert storage.get_flow(flows[1].location).run() == "2"


def test_corrupted_blob_is_refused(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, ignore_healthchecks=True)
    flow = ImageFlow("solo", storage.location_for("solo"), pickled_flow("solo", uuid.uuid4().hex))
    image = storage.build_image([flow])
    manifest = Registry(docker_env).manifest(storage.repository, image.digest)
    flow_layer = manifest["layers"][-1]["digest"]  # the only flow is the top layer
    state_dir = Path(os.environ.get("FLOWSTORE_LOCALCLOUD_DIR") or ROOT / ".localcloud")
    hexdigest = flow_layer.removeprefix("sha256:")
    blob = state_dir / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] \
        / hexdigest / "data"
    assert blob.exists(), f"the local registry keeps its blobs elsewhere than {blob}"
    original = blob.read_bytes()
    blob.write_bytes(original[:-8] + bytes(8))  # same size, different bytes: only the digest can tell
    try:
        with pytest.raises(IntegrityError, match=hexdigest[:12]):
            storage.read_flow(image.digest, flow.location)
    finally:
        blob.write_bytes(original)
    assert storage.read_flow(image.digest, flow.location) == flow.data


# --------------------------------------------------------------------------- failures, each its own error
def test_flows_failing_the_healthcheck(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env)
    good = ImageFlow("good", storage.location_for("good"), pickled_flow("good", "ok"))
    unpicklable = ImageFlow("by-reference", storage.location_for("by-reference"),
                            envelope.dumps(Flow("by-reference", _module_level_function)))
    wrong_script = ImageFlow("named", "/opt/prefect/flows/named.py", script_source("other-name", "x"))
    with pytest.raises(HealthcheckFailed) as info:
        storage.build_image([good, unpicklable, wrong_script])
    exc = info.value
    assert exc.reason == "HealthcheckFailed" and not exc.retryable
    assert set(exc.flows) == {"by-reference", "named"}
    assert "ModuleNotFoundError" in exc.message and "'tests'" in exc.message
    assert "image Python 3." in exc.message and "stored with Python " in exc.message  # the versions, both sides
    assert "defines no object whose name is 'named'" in exc.message
    assert "2 of 3 flows failed" in exc.log_tail
    assert "'good'" not in exc.message and good.location not in exc.message  # the controller can tell culprits


def _healthcheck_containers(docker_env: dict[str, str], storage: Docker, flows: list[ImageFlow]) -> list[str]:
    """Ids of the running healthcheck containers of `storage`'s base image."""
    import docker

    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto")
    base_tag = f"fs-base-{storage.plan(flows).base.inputs_digest[:32]}"
    image_id = api.inspect_image(f"{storage.image_repository}:{base_tag}")["Id"]
    found = api.containers(filters={"label": [f"{docker_mod.HEALTHCHECK_LABEL}={image_id}",
                                              f"{docker_mod.HEALTHCHECK_REPOSITORY_LABEL}={storage.image_repository}"]})
    return sorted(str(c["Id"]) for c in found)


def test_one_healthcheck_container_serves_the_checks_then_goes_away(
        docker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    # idle long enough for the second build's check to come first on a loaded machine (with 8 s it
    # did not: a new container served it), short enough to see the container end below
    monkeypatch.setattr(docker_daemon, "HEALTHCHECK_IDLE", 45)
    storage = make_storage(docker_env, env_vars={"FLOWSTORE_TEST": uuid.uuid4().hex})  # a base of its own
    flows = [ImageFlow("one", storage.location_for("one"), pickled_flow("one", "1"))]
    storage.build_image(flows)
    first = _healthcheck_containers(docker_env, storage, flows)
    assert len(first) == 1
    flows.append(ImageFlow("two", storage.location_for("two"), pickled_flow("two", "2")))
    image = storage.build_image(flows)
    assert "2 flows load" in image.log_tail
    assert _healthcheck_containers(docker_env, storage, flows) == first, "the second check reuses the container"
    # another storage on the same base image gets a container of its own: flows never meet
    neighbour = make_storage(docker_env, env_vars=storage.env_vars)
    assert neighbour.plan(flows).base.inputs_digest == storage.plan(flows).base.inputs_digest
    neighbour.build_image(flows[:1])
    theirs = _healthcheck_containers(docker_env, neighbour, flows)
    assert len(theirs) == 1 and theirs != first
    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto")
    base_tag = f"fs-base-{storage.plan(flows).base.inputs_digest[:32]}"
    assert api.inspect_image(f"{neighbour.image_repository}:{base_tag}")["Id"] == \
        api.inspect_image(f"{storage.image_repository}:{base_tag}")["Id"], "one base image (the build cache)"
    deadline = time.monotonic() + 120
    while _healthcheck_containers(docker_env, storage, flows) and time.monotonic() < deadline:
        time.sleep(1)
    assert _healthcheck_containers(docker_env, storage, flows) == [], "an idle healthcheck container ends"
    # and the next check starts a new one
    flows.append(ImageFlow("three", storage.location_for("three"), pickled_flow("three", "3")))
    assert "3 flows load" in storage.build_image(flows).log_tail


def test_a_flow_that_hangs_when_loaded_fails_the_healthcheck(
        docker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_daemon, "HEALTHCHECK_TIMEOUT", 2)
    # two hanging flows take longer than one daemon call may: the check's call waits for them
    monkeypatch.setattr(docker_daemon, "DAEMON_TIMEOUT", 3)
    storage = make_storage(docker_env)
    hangs = ImageFlow("hangs", "/opt/prefect/flows/hangs.py", b"import time\ntime.sleep(120)\n")
    also = ImageFlow("also hangs", "/opt/prefect/flows/also.py", b"import time\ntime.sleep(120)\n")
    fine = ImageFlow("fine", storage.location_for("fine"), pickled_flow("fine", "ok"))
    with pytest.raises(HealthcheckFailed) as info:
        storage.build_image([hangs, also, fine])
    assert "'hangs'" in info.value.message and "longer than 2 s" in info.value.message
    assert set(info.value.flows) == {"hangs", "also hangs"}, "the other flows are still checked, and pass"
    assert "2 of 3 flows failed" in info.value.log_tail
    assert storage.image_digest is None, "nothing was pushed"


def test_env_runner_runs_the_flow_in_the_image_with_the_env(docker_env: dict[str, str]) -> None:
    token = uuid.uuid4().hex
    storage = make_storage(docker_env)
    source = (b"import os\nfrom flowstore.flow import Flow\n\n\ndef main():\n"
              b"    if os.environ.get('FLOW_TOKEN') != " + repr(token).encode() + b":\n"
              b"        raise SystemExit(3)\n\n\nflow = Flow('env flow', main)\n")
    location = "/opt/prefect/flows/env-flow.py"
    storage.build_image([ImageFlow("env flow", location, source)])
    storage.flows["env flow"] = location
    runner = storage.get_env_runner(location)
    assert runner.image == f"{storage.image_repository}@{storage.image_digest}"
    assert runner.run(env={"FLOW_TOKEN": token}) == 0
    assert runner.run(env={"FLOW_TOKEN": "wrong"}) == 3


def test_daemon_over_tls_with_a_client_certificate(docker_env: dict[str, str], tmp_path: Path) -> None:
    authority = Authority.create()
    proxy = tls_daemon(docker_env, authority, tmp_path)
    client = authority.issue("flowstore operator")
    try:
        config = {"registryURL": docker_env["registry"], "imageName": f"test/tls-{uuid.uuid4().hex[:8]}",
                  "baseImage": docker_env["base_image"], "daemonURL": f"tcp://127.0.0.1:{proxy.port}",
                  "daemonTLS": {"ca.crt": authority.cert_pem, "tls.crt": client.cert, "tls.key": client.key}}
        creds = {".dockerconfigjson": json.dumps({"auths": {docker_env["registry"]: {
            "username": docker_env["username"], "password": docker_env["password"]}}})}
        storage = Docker.from_config(config, credentials=creds)
        assert client.key not in repr(storage) and client.key not in json.dumps(storage.to_status())
        image = storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "over tls"))])
        assert "1 flows load" in image.log_tail and proxy.accepted > 0
        assert storage.get_flow(storage.location_for("f")).run() == "over tls"
        refused = proxy.tls_refused

        # a client certificate from another CA, and none at all: the daemon refuses the handshake
        stranger = Authority.create("another CA").issue("someone")
        for tls in ({"ca.crt": authority.cert_pem, "tls.crt": stranger.cert, "tls.key": stranger.key},
                    {"ca.crt": authority.cert_pem}):
            other = Docker.from_config({**config, "imageName": f"test/tls-{uuid.uuid4().hex[:8]}", "daemonTLS": tls},
                                       credentials=creds)
            with pytest.raises(DaemonUnavailable) as info:
                other.build_image([ImageFlow("f", other.location_for("f"), pickled_flow("f", "x"))])
            assert "daemonTLSSecretRef" in info.value.message
            assert stranger.key not in info.value.message
        # a daemon certificate the given CA did not sign: this side refuses it
        unknown_ca = Docker.from_config({**config, "daemonTLS": {"ca.crt": Authority.create("wrong CA").cert_pem,
                                                                 "tls.crt": client.cert, "tls.key": client.key}},
                                        credentials=creds)
        with pytest.raises(DaemonUnavailable, match="daemonTLSSecretRef"):
            unknown_ca.build_image([ImageFlow("f", unknown_ca.location_for("f"), pickled_flow("f", "y"))])
        deadline = time.monotonic() + 10  # the proxy's side of a refused handshake may finish after ours
        while proxy.tls_refused < refused + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.tls_refused >= refused + 3, "each was refused in the TLS handshake"
    finally:
        proxy.stop()
    with pytest.raises(InvalidConfig, match=r"both tls\.crt and tls\.key"):
        Docker.from_config({"registryURL": docker_env["registry"], "daemonTLS": {"tls.crt": client.cert}})


def test_flow_layers_leave_the_base_images_directories_alone(docker_env: dict[str, str]) -> None:
    """As with COPY: a flow directory the Dockerfile made (owned by uid 1000, mode 0750) keeps
    its owner and mode in the final image, as seen by a flow run in a container of it."""
    dockerfile = (f"FROM {docker_env['base_image']}\n"
                  "RUN mkdir -p /opt/prefect/flows && chown -R 1000:1000 /opt/prefect"
                  " && chmod 0750 /opt/prefect/flows\n")
    storage = make_storage(docker_env, dockerfile=dockerfile)
    source = (b"import os\nimport stat\nfrom flowstore.flow import Flow\n\n\ndef main():\n"
              b"    info = os.stat('/opt/prefect/flows')\n"
              b"    if (info.st_uid, stat.S_IMODE(info.st_mode)) != (1000, 0o750):\n"
              b"        raise SystemExit(4)\n\n\nflow = Flow('owned', main)\n")
    location = "/opt/prefect/flows/owned.py"
    storage.build_image([ImageFlow("owned", location, source)])
    storage.flows["owned"] = location
    assert storage.get_env_runner(location).run() == 0


def test_local_build_without_push_runs_in_the_daemon(docker_env: dict[str, str]) -> None:
    """The seed's build(push=False): the whole image in the daemon only, healthchecked, runnable."""
    import docker

    token = uuid.uuid4().hex
    storage = make_storage(docker_env, local_image=True)

    def main() -> None:
        if os.environ.get("FLOW_TOKEN") != token:
            raise SystemExit(6)

    location = storage.add_flow(Flow("local flow", main))
    assert storage.build(push=False) is storage
    assert storage.image_digest is None and storage.image_tag and storage.image_tag.startswith("fs-")
    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto")
    labels = api.inspect_image(f"{storage.image_repository}:{storage.image_tag}")["Config"]["Labels"]
    assert json.loads(labels[df.LABEL_FLOWS]) == {"local flow": location}
    with pytest.raises(NotFound):  # nothing was pushed
        storage._registry().manifest(storage.repository, storage.image_tag)
    runner = storage.get_env_runner(location)
    assert runner.image == f"{storage.image_repository}:{storage.image_tag}"
    assert runner.run(env={"FLOW_TOKEN": token}) == 0
    assert runner.run(env={}) == 6


def test_missing_base_image(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, base_image=f"localhost/flowstore-missing-{uuid.uuid4().hex[:8]}:1")
    with pytest.raises(BaseImageNotFound) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    assert info.value.reason == "BaseImageNotFound"
    assert "flowstore-missing-" in info.value.message


def test_dependency_that_cannot_install(docker_env: dict[str, str]) -> None:
    package = f"flowstore-no-such-package-{uuid.uuid4().hex[:8]}"
    storage = make_storage(docker_env, python_dependencies=[package])
    with pytest.raises(DependencyInstallFailed) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    assert info.value.reason == "DependencyInstallFailed"
    assert package in info.value.message


def test_dockerfile_syntax_error(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, dockerfile=f"FROM {docker_env['base_image']}\nFOOBAR nonsense\n")
    with pytest.raises(DockerfileInvalid) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    assert info.value.reason == "DockerfileInvalid"
    assert "FOOBAR" in info.value.message


def test_registry_unreachable(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, registry_url=f"127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnavailable) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    assert info.value.retryable and info.value.reason == "RegistryUnavailable"


def test_wrong_registry_password(docker_env: dict[str, str]) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    secret = {".dockerconfigjson": json.dumps(
        {"auths": {docker_env["registry"]: {"username": docker_env["username"], "password": wrong}}})}
    storage = Docker.from_config({"registryURL": docker_env["registry"], "imageName": "test/denied",
                                  "baseImage": docker_env["base_image"], "daemonURL": docker_env["docker_host"]},
                                 credentials=secret)
    with pytest.raises(AuthFailed) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    message = info.value.message
    assert docker_env["registry"] in message and "Secret" in message
    assert wrong not in message and wrong not in repr(storage) and wrong not in json.dumps(storage.to_status())


def test_daemon_unreachable(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, base_url=f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(DaemonUnavailable) as info:
        storage.build_image([ImageFlow("f", storage.location_for("f"), pickled_flow("f", "x"))])
    assert info.value.retryable and info.value.reason == "DaemonUnavailable"


# --------------------------------------------------------------------------- pure parts
def test_context_is_deterministic_and_flow_layers_are_sorted() -> None:
    flows = [df.FlowFile("b", "/opt/prefect/flows/b.prefect", b"B"), df.FlowFile("a", "/opt/prefect/flows/a.py",
                                                                                  b"A", "script")]
    one = df.render(df.ImageSpec(base_image="python:3.11-slim", flows=flows, python_dependencies=["six==1.16"]))
    two = df.render(df.ImageSpec(base_image="python:3.11-slim", flows=list(reversed(flows)),
                                 python_dependencies=["six==1.16"]))
    assert one.tar == two.tar and one.inputs_digest == two.inputs_digest
    lines = one.dockerfile.splitlines()
    copies = [line for line in lines if line.startswith('COPY ["flows/')]
    assert copies == ['COPY ["flows/opt/prefect/flows/a.py", "/opt/prefect/flows/a.py"]',
                      'COPY ["flows/opt/prefect/flows/b.prefect", "/opt/prefect/flows/b.prefect"]']
    pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert pip < lines.index('COPY ["runtime/", "/opt/flowstore/"]')
    with tarfile.open(fileobj=io.BytesIO(one.tar)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(df.FIXED_MTIME, 0, 0)}
    with pytest.raises(df.DockerfileError):
        df.render(df.ImageSpec(base_image="x", dockerfile="FROM y\n"))


def test_base_context_has_no_flows_and_flow_layers_are_deterministic() -> None:
    flows = [df.FlowFile("a", "/opt/prefect/flows/a.py", b"A", "script")]
    base = df.render_base(df.ImageSpec(base_image="python:3.11-slim", flows=flows, env_vars={"X": "1"}))
    assert "flows/" not in base.dockerfile and "/opt/prefect" not in base.dockerfile
    other_flows = df.render_base(df.ImageSpec(base_image="python:3.11-slim", env_vars={"X": "1"},
                                              flows=[df.FlowFile("b", "/opt/prefect/flows/b.py", b"B", "script")]))
    assert other_flows.inputs_digest == base.inputs_digest, "the base does not depend on the flows"
    with pytest.raises(df.DockerfileError, match="same location"):
        df.checked_flows(df.ImageSpec(base_image="x", flows=[*flows, df.FlowFile("b", "/opt/prefect/flows/a.py", b"")]))
    one, two = file_layer("/opt/prefect/flows/a.py", b"A"), file_layer("/opt/prefect/flows/a.py", b"A")
    assert (one.blob, one.digest, one.diff_id) == (two.blob, two.digest, two.diff_id)
    assert one.digest == "sha256:" + hashlib.sha256(one.blob).hexdigest()
    tar_bytes = gzip.decompress(one.blob)
    assert one.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        # no directories given: the file only
        assert [(m.name, m.mode, m.uid) for m in tar.getmembers()] == [("opt/prefect/flows/a.py", 0o644, 0)]
    assert file_layer("/opt/prefect/flows/a.py", b"B").digest != one.digest
    # the base image's directories above the file go in as the base has them (as with COPY), so an
    # overlay store, which unpacks the layer on its own, shows the base's owner and mode; others not
    flows_dir = tarfile.TarInfo("opt/prefect/flows")
    flows_dir.type, flows_dir.mode, flows_dir.mtime = tarfile.DIRTYPE, 0o750, 7
    flows_dir.uid = flows_dir.gid = 1000
    elsewhere = tarfile.TarInfo("srv")
    elsewhere.type, elsewhere.mode = tarfile.DIRTYPE, 0o700
    carried = file_layer("/opt/prefect/flows/a.py", b"A", directories={"/opt/prefect/flows": flows_dir,
                                                                       "/srv": elsewhere})
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(carried.blob))) as tar:
        assert [(m.name, m.isdir(), m.mode, m.uid, m.gid, m.mtime) for m in tar.getmembers()] == [
            ("opt/prefect/flows", True, 0o750, 1000, 1000, 7),
            ("opt/prefect/flows/a.py", False, 0o644, 0, 0, df.FIXED_MTIME)]
    assert carried.digest == file_layer("/opt/prefect/flows/a.py", b"A",
                                        directories={"/opt/prefect/flows": flows_dir}).digest


def test_assemble_appends_layers_to_the_base() -> None:
    base_manifest = {"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
                     "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                                "digest": "sha256:" + "c" * 64},
                     "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 10,
                                 "digest": "sha256:" + "a" * 64}]}
    base_config = {"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                   "config": {"Env": ["A=1"], "Labels": {"keep": "me", df.LABEL_INPUTS: "base"}},
                   "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]},
                   "history": [{"created_by": "FROM scratch"}]}
    layer = file_layer("/f.prefect", b"F", comment="flow f")
    config_blob, manifest_blob, media_type = assemble(base_manifest, base_config, [layer],
                                                      {df.LABEL_INPUTS: "image"})
    assert media_type == MEDIA_DOCKER_MANIFEST
    config, manifest = json.loads(config_blob), json.loads(manifest_blob)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + "b" * 64, layer.diff_id]
    assert config["config"]["Labels"] == {"keep": "me", df.LABEL_INPUTS: "image"}
    assert config["config"]["Env"] == ["A=1"] and config["created"] == "2026-01-01T00:00:00Z"
    assert config["history"][-1] == {"created": "2026-01-01T00:00:00Z", "created_by": "flowstore: COPY /f.prefect",
                                     "comment": "flow f"}
    assert manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "size": len(config_blob),
                                  "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest()}
    assert manifest["layers"][-1] == {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                      "size": layer.size, "digest": layer.digest}
    assert (config_blob, manifest_blob) == assemble(base_manifest, base_config, [layer],
                                                    {df.LABEL_INPUTS: "image"})[:2]
    assert base_config["rootfs"]["diff_ids"] == ["sha256:" + "b" * 64], "the base is not modified"
    oci = {**base_manifest, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    assert json.loads(assemble(oci, base_config, [layer], {})[1])["layers"][-1]["mediaType"] == \
        "application/vnd.oci.image.layer.v1.tar+gzip"
    with pytest.raises(ImageAssemblyError, match="diff IDs"):
        assemble({**base_manifest, "layers": []}, base_config, [layer], {})


def test_credentials_and_config() -> None:
    auth = base64.b64encode(b"user:pa:ss").decode()
    secret = {".dockerconfigjson": json.dumps({"auths": {"https://reg.example:5000/v2/": {"auth": auth}}})}
    storage = Docker.from_config({"registryURL": "reg.example:5000/team", "imageName": "flows",
                                  "baseImage": "python:3.11-slim", "flowDirectory": "/srv/flows",
                                  "buildArgs": {"A": "1"}, "target": "final", "ignoreHealthchecks": True},
                                 credentials=secret)
    assert (storage.registry_username, storage._registry_password) == ("user", "pa:ss")
    assert storage.image_repository == "reg.example:5000/team/flows"
    assert storage.location_for("My Flow") == "/srv/flows/flows/my-flow.prefect"
    assert storage.build_kwargs == {"buildargs": {"A": "1"}, "target": "final"}
    assert "pa:ss" not in json.dumps(storage.to_status())
    with pytest.raises(InvalidConfig, match=r"no entry for registry other\.example"):
        Docker.from_config({"registryURL": "other.example"}, credentials=secret)
    with pytest.raises(InvalidConfig):
        Docker.from_config({"registryURL": "r.example", "baseImage": "a", "dockerfile": "FROM b\n"})
    # a resource's `dockerfile` is text: never a path the operator would read
    spec = Docker.from_config({"registryURL": "r.example", "dockerfile": "/etc/hostname"}).image_spec([])
    assert spec.dockerfile == "/etc/hostname"
    # serialized output (with the digest) restores the built image; its tag is not a fixed one
    doc = Docker.from_config({"registryURL": "r.example", "imageTag": "fs-1", "imageDigest": "sha256:" + "a" * 64})
    assert doc.image_digest == "sha256:" + "a" * 64 and doc.image_tag == "fs-1" and doc._fixed_tag is None


@pytest.fixture(autouse=True)
def _no_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The developer's ~/.docker/config.json must not leak into these tests."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    yield


# --------------------------------------------------------------------------- bearer token auth
class _TokenFront:
    """The registry behind the Bearer token flow (as Docker Hub, GHCR, Harbor do it): /v2/ asks for
    a token from /token (basic auth), then forwards authorised reads to the real registry."""

    def __init__(self, docker_env: dict[str, str]) -> None:
        import http.server
        import threading

        self.upstream = f"http://{docker_env['registry']}"
        self.upstream_auth = (docker_env["username"], docker_env["password"])
        self.tokens: dict[str, str] = {}  # token -> scope
        self.token_requests: list[dict[str, str]] = []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                front.handle(self, "GET")

            def do_HEAD(self) -> None:
                front.handle(self, "HEAD")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, req: Any, method: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(req.path)
        if url.path == "/token":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.token_requests.append(query)
            expected = "Basic " + base64.b64encode(":".join(self.upstream_auth).encode()).decode()
            if req.headers.get("Authorization") != expected:
                return self.reply(req, 401, b'{"details": "bad credentials"}', {})
            token = uuid.uuid4().hex
            self.tokens[token] = query.get("scope", "")
            return self.reply(req, 200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})
        repo = url.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
        scope = f"repository:{repo}:pull"
        token = (req.headers.get("Authorization") or "").removeprefix("Bearer ")
        if self.tokens.get(token) != scope:
            challenge = f'Bearer realm="http://127.0.0.1:{self.port}/token",service="front",scope="{scope}"'
            return self.reply(req, 401, b"{}", {"WWW-Authenticate": challenge})
        resp = requests.request(method, self.upstream + req.path, auth=self.upstream_auth, timeout=60,
                                headers={"Accept": req.headers.get("Accept", "*/*")})
        keep = {k: v for k, v in resp.headers.items() if k in ("Content-Type", "Docker-Content-Digest")}
        self.reply(req, resp.status_code, resp.content if method == "GET" else b"", keep,
                   length=int(resp.headers.get("Content-Length", len(resp.content))))

    @staticmethod
    def reply(req: Any, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body) if length is None else length))
        req.end_headers()
        if body:
            req.wfile.write(body)


def test_bearer_token_challenge(built: Built, docker_env: dict[str, str]) -> None:
    front = _TokenFront(docker_env)
    try:
        reader = Docker(registry_url=f"127.0.0.1:{front.port}", image_name=built.storage.image_name,
                        registry_username=docker_env["username"], registry_password=docker_env["password"])
        flow = built.flows[1]
        assert reader.read_flow(built.image.digest, flow.location) == flow.data
        assert front.token_requests[0] == {"service": "front", "scope": f"repository:{built.storage.repository}:pull"}
        bad = Docker(registry_url=f"127.0.0.1:{front.port}", image_name=built.storage.image_name,
                     registry_username=docker_env["username"], registry_password="wrong-password")
        with pytest.raises(AuthFailed, match="token"):
            bad.read_flow(built.image.digest, flow.location)
    finally:
        front.server.shutdown()
        front.server.server_close()


def test_seed_interface_add_flow_build_get_flow(docker_env: dict[str, str]) -> None:
    token = uuid.uuid4().hex

    def main() -> str:
        return token

    storage = make_storage(docker_env, ignore_healthchecks=True)
    location = storage.add_flow(Flow("seed flow", main))
    assert location == "/opt/prefect/flows/seed-flow.prefect"
    with pytest.raises(ValueError, match="Name conflict"):
        storage.add_flow(Flow("seed flow", main))
    assert storage.build() is storage
    assert storage.image_digest and storage.image_tag
    assert storage.get_flow(location).run() == token
    assert storage.to_status()["flows"] == {"seed flow": location}


# --------------------------------------------------------------------------- flows of several files
def flow_bundle(result: str, helper: str = "def value():\n    return {result!r}\n") -> bytes:
    from flowstore.artifacts import bundle

    main = ("from flowstore.flow import Flow\nfrom pathlib import Path\nfrom etl.helpers import value\n\n"
            "SQL = Path(__file__).parent / 'q.sql'\n"
            "flow = Flow('many files', lambda: value() + ' ' + SQL.read_text().strip())\n")
    return bundle.pack({"etl/main.py": main.encode(), "etl/helpers.py": helper.format(result=result).encode(),
                        "etl/q.sql": b"select 1\n"}, bundle.Entrypoint("etl/main.py"))


def test_a_bundle_is_unpacked_in_the_image_and_loads(docker_env: dict[str, str], registry: Registry) -> None:
    """Its files sit under the flow's directory (it runs in the image with them), the bundle
    beside them is what agents read and verify, and the healthcheck imports its entrypoint."""
    storage = make_storage(docker_env, env_vars={"FLOWSTORE_TEST": uuid.uuid4().hex})
    data = flow_bundle("v1")
    location = "/opt/prefect/flows/many-files.tar.gz"
    image = storage.build_image([ImageFlow("many files", location, data)])
    assert "1 flows load" in image.log_tail
    top = registry.manifest(storage.repository, image.digest)["layers"][-1]["digest"]
    assert registry.layer_files(storage.repository, top) == {
        "opt/prefect/flows/many-files.tar.gz": data,
        "opt/prefect/flows/many-files/etl/main.py": bundle_file(data, "etl/main.py"),
        "opt/prefect/flows/many-files/etl/helpers.py": bundle_file(data, "etl/helpers.py"),
        "opt/prefect/flows/many-files/etl/q.sql": b"select 1\n",
    }
    assert storage.read_flow(image.digest, location) == data
    storage.flows["many files"] = location
    assert storage.get_flow(location, sha256=hashlib.sha256(data).hexdigest()).run() == "v1 select 1"


def test_a_bundle_whose_helper_fails_fails_the_healthcheck(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, env_vars={"FLOWSTORE_TEST": uuid.uuid4().hex})
    broken = flow_bundle("v1", helper="raise ImportError('psycopg2 is not in this image')\n")
    with pytest.raises(HealthcheckFailed) as info:
        storage.build_image([ImageFlow("many files", "/opt/prefect/flows/many-files.tar.gz", broken)])
    assert info.value.flows == ("many files",)
    assert "psycopg2 is not in this image" in info.value.message and "helpers.py" in info.value.message


def bundle_file(data: bytes, path: str) -> bytes:
    from flowstore.artifacts import bundle

    return bundle.unpack(data).files[path]


# --------------------------------------------------------------------------- the seed's Dockerfile, push, pull
def _engine_build(docker_env: dict[str, str], context_dir: str, ref: str) -> tuple[bool, str]:
    """Build `context_dir` (a directory with a Dockerfile) as `ref` with the Engine API, as `docker
    build DIR` would: (succeeded, build output)."""
    import docker

    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto", timeout=600)
    lines, ok = [], True
    for chunk in api.build(path=context_dir, tag=ref, rm=True, forcerm=True, pull=False, decode=True):
        lines.append(str(chunk.get("stream") or chunk.get("status") or ""))
        if chunk.get("error") or chunk.get("errorDetail"):
            ok = False
            lines.append(str(chunk.get("error") or chunk.get("errorDetail")))
    return ok, "".join(lines)


def test_create_dockerfile_object_is_the_image_any_builder_makes(docker_env: dict[str, str], tmp_path: Path) -> None:
    """The seed's create_dockerfile_object: built by another builder (here the Engine API given the
    directory), the image holds what build_image pushes (environment, files, extra commands, every
    flow at its location, the labels) and its build ran the healthcheck."""
    token = uuid.uuid4().hex
    helper = tmp_path / "helper.py"
    helper.write_text(f"VALUE = {token!r}\n")
    storage = make_storage(docker_env, local_image=True,
                           env_vars={"FLOW_ENV": token, "PYTHONPATH": "$PYTHONPATH:/modules"},
                           files={str(helper): "/modules/helper.py", "/modules/data.txt": token.encode()},
                           extra_dockerfile_commands=["RUN echo extra > /opt/extra.txt"])

    def checks_the_image() -> str:  # no assert: pytest would rewrite it into a reference to _pytest
        import helper  # type: ignore[import-not-found]  # from the files, on the image's PYTHONPATH

        if open("/opt/extra.txt").read() != "extra\n":
            raise SystemExit(3)
        if not open("/modules/data.txt").read() == os.environ["FLOW_ENV"] == helper.VALUE:
            raise SystemExit(4)
        return str(helper.VALUE)

    def plain() -> str:
        return token

    checked = storage.add_flow(Flow("checks the image", checks_the_image))
    second = storage.add_flow(Flow("plain", plain))
    dockerfile = storage.create_dockerfile_object(str(tmp_path / "context"))
    assert dockerfile == str(tmp_path / "context" / "Dockerfile") and os.path.isabs(dockerfile)
    text = Path(dockerfile).read_text()
    assert text.startswith(f"FROM {docker_env['base_image']}\n")
    assert f'COPY ["flows{checked}", "{checked}"]' in text and f'COPY ["flows{second}", "{second}"]' in text
    assert "RUN echo extra > /opt/extra.txt" in text
    assert text.index("RUN echo extra") < text.index(f'"{checked}"]') < text.index("--image")  # then the check
    assert (tmp_path / "context" / "flows" / checked.lstrip("/")).is_file()

    tag = f"dockerfile-{token[:8]}"
    ok, output = _engine_build(docker_env, str(tmp_path / "context"), f"{storage.image_repository}:{tag}")
    assert ok, output
    assert "flowstore-healthcheck: 2 flows load" in output  # the seed's healthcheck ran in the build

    # the flows, loaded from the result: run in a container of it ...
    storage.image_tag = tag
    assert storage.get_env_runner(checked).run() == 0
    # ... and, pushed with the seed's push_image, read back from the registry and run here
    storage.push_image(storage.image_repository, tag)
    digest = storage._registry().manifest_digest(storage.repository, tag)
    assert digest
    reader = make_storage(docker_env, image_name=storage.image_name)
    reader.restore_state({"imageDigest": digest})
    assert reader.get_flow(second).run() == token
    config = storage._registry().config(storage.repository, storage._registry().manifest(storage.repository, digest))
    labels = config["config"]["Labels"]
    assert json.loads(labels[df.LABEL_FLOWS]) == {"checks the image": checked, "plain": second}  # as build_image
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    assert env["FLOW_ENV"] == token and env["PYTHONPATH"] == "/opt/flowstore/runtime:/modules"


def test_create_dockerfile_object_healthcheck_fails_the_build(docker_env: dict[str, str], tmp_path: Path) -> None:
    storage = make_storage(docker_env)
    storage.add_flow(Flow("by-reference", _module_level_function))  # cannot load in the image
    checked = Path(storage.create_dockerfile_object(str(tmp_path / "checked"))).parent
    ok, output = _engine_build(docker_env, str(checked), f"{storage.image_repository}:checked")
    assert not ok
    assert "FAILED flow 'by-reference'" in output and "ModuleNotFoundError" in output

    unchecked = make_storage(docker_env, ignore_healthchecks=True)
    unchecked.add_flow(Flow("by-reference", _module_level_function))
    dockerfile = unchecked.create_dockerfile_object(str(tmp_path / "unchecked"))
    assert "healthcheck" not in Path(dockerfile).read_text()
    ok, output = _engine_build(docker_env, str(tmp_path / "unchecked"), f"{unchecked.image_repository}:unchecked")
    assert ok, output


def test_create_dockerfile_object_checks_the_seeds_script_in_the_files(docker_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """The seed's script mode: the script is one of the files, at `path`; the healthcheck loads it."""
    script = tmp_path / "etl.py"
    script.write_bytes(script_source("etl", uuid.uuid4().hex))  # new content: no build cache hides the check
    storage = make_storage(docker_env, stored_as_script=True, path="/opt/prefect/flows/etl.py",
                           files={str(script): "/opt/prefect/flows/etl.py"})
    assert storage.add_flow("etl") == "/opt/prefect/flows/etl.py"  # no source: it is in the files
    context = tmp_path / "context"
    text = Path(storage.create_dockerfile_object(str(context))).read_text()
    assert '"location": "/opt/prefect/flows/etl.py"' in text.replace("\\", "")
    ok, output = _engine_build(docker_env, str(context), f"{storage.image_repository}:script")
    assert ok, output
    assert "flowstore-healthcheck: 1 flows load" in output
    script.write_bytes(script_source("other name", "x"))  # no object named etl any more
    broken = Path(storage.create_dockerfile_object(str(tmp_path / "broken"))).parent
    ok, output = _engine_build(docker_env, str(broken), f"{storage.image_repository}:broken")
    assert not ok and "defines no object whose name is 'etl'" in output


def test_push_image_and_pull_image(docker_env: dict[str, str]) -> None:
    import docker

    api = docker.APIClient(base_url=docker_env["docker_host"], version="auto")
    storage = make_storage(docker_env)
    repository = f"{docker_env['registry']}/test/base-{uuid.uuid4().hex[:10]}"
    api.tag(docker_env["base_image"], repository, "1")
    storage.push_image(repository, "1")  # the seed's push_image(image_name, image_tag)
    assert Registry(docker_env).head_digest(repository.split("/", 1)[1], "1").startswith("sha256:")
    api.remove_image(f"{repository}:1")

    puller = make_storage(docker_env, base_image=f"{repository}:1")
    puller.pull_image()  # with the storage's registry credentials
    assert api.inspect_image(f"{repository}:1")["Id"] == api.inspect_image(docker_env["base_image"])["Id"]

    with pytest.raises(BaseImageNotFound):
        make_storage(docker_env, base_image=f"{repository}:no-such-tag").pull_image()
    with pytest.raises(AuthFailed):
        make_storage(docker_env, base_image=f"{repository}:1", registry_password="wrong").pull_image()
    with pytest.raises(AuthFailed):
        make_storage(docker_env, registry_password="wrong").push_image(repository, "1")
    with pytest.raises(InvalidConfig, match="FROM"):
        make_storage(docker_env, dockerfile="FROM scratch\n").pull_image()
    with pytest.raises(DaemonUnavailable):
        make_storage(docker_env, base_url=f"tcp://127.0.0.1:{free_port()}").push_image(repository, "1")


def _tar(*entries: tuple[str, int, int]) -> bytes:
    """A layer tar of (name, mode, uid) entries: directories when the name ends in /, else empty files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode, uid in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            info.mode, info.uid, info.gid = mode, uid, uid
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def test_directory_entries_come_from_the_topmost_layer_that_has_them(docker_env: dict[str, str]) -> None:
    """What flow layers copy from their base (see test_flow_layers_leave_the_base_images_directories_
    alone): each directory as the topmost layer has it, through whiteouts and opaque directories,
    with gzip and plain tar layers, streamed from a real registry and checked against the digests."""
    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"])
    repo = f"test/dirs-{uuid.uuid4().hex[:8]}"
    bottom = gzip.compress(_tar(("opt/", 0o755, 0), ("opt/app/", 0o700, 7), ("srv/", 0o755, 0),
                                ("srv/data/", 0o750, 8), ("var/", 0o755, 0), ("var/cache/", 0o755, 9),
                                ("etc/", 0o755, 0), ("etc/conf", 0o644, 0)))
    top = _tar(("opt/", 0o750, 1000), ("srv/.wh.data", 0o644, 0), ("var/", 0o755, 0),
               ("var/.wh..wh..opq", 0o644, 0))  # plain tar: some registries hold those
    layers = [(bottom, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
              (top, "application/vnd.docker.image.rootfs.diff.tar")]
    for blob, _ in layers:
        client.push_blob(repo, blob)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        "sha256:" + hashlib.sha256(gzip.decompress(bottom)).hexdigest(), "sha256:" + hashlib.sha256(top).hexdigest()]}}
    ).encode()
    client.push_blob(repo, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST, "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
        "digest": "sha256:" + hashlib.sha256(config).hexdigest()}, "layers": [
        {"mediaType": media, "size": len(blob), "digest": "sha256:" + hashlib.sha256(blob).hexdigest()}
        for blob, media in layers]}).encode()
    digest = client.push_manifest(repo, "t", manifest, MEDIA_DOCKER_MANIFEST)

    found = client.directory_entries(repo, digest, ["/opt", "/opt/app", "/srv/data", "/var/cache", "/etc/conf",
                                                    "/missing", "/srv"])
    assert {path: (m.mode, m.uid) for path, m in found.items()} == {
        "/opt": (0o750, 1000),  # the top layer's, not the bottom's
        "/opt/app": (0o700, 7),  # only below: found there
        "/srv": (0o755, 0),
    }  # /srv/data whited out, /var/cache under an opaque directory, /etc/conf a file, /missing nowhere
