"""Docker storage against real components (LOCAL-CLOUD.md): images are built by the Docker
Engine API (podman system service), pushed to a real registry (Debian's docker-registry with
htpasswd auth) and read back through the registry HTTP API without the daemon.

Containers cannot be started on this machine, so `get_env_runner` is not exercised here; each
flow is loaded and *run* in the image at build time by the image healthcheck, and loaded back
and run in this process from the registry bytes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore.build import dockerfile as df
from flowstore.build import envelope
from flowstore.flow import Flow
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
from flowstore.storage.errors import AuthFailed, IntegrityError, InvalidConfig, NotFound
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.backend

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                   "application/vnd.oci.image.manifest.v1+json")


def _module_level_function() -> str:
    """Pickled *by reference* (tests.storage.test_docker), so it cannot load in the image."""
    return "unreachable"


def script_source(flow_name: str, result: str) -> bytes:
    return (f"from flowstore.flow import Flow\n\n\ndef main():\n    return {result!r}\n\n\n"
            f"flow = Flow({flow_name!r}, main)\n").encode()


def pickled_flow(flow_name: str, result: str) -> bytes:
    def main() -> str:  # a local function: cloudpickle pickles it by value
        return result

    return envelope.dumps(Flow(flow_name, main))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    # the top layers, newest first: healthcheck RUN, flows.json, gamma, beta, alpha, runtime, helper file
    layers = [layer["digest"] for layer in manifest["layers"]]
    contents = [registry.layer_files(repo, digest) for digest in layers[-7:]]
    helper, runtime, alpha, beta, gamma, flows_json, _healthcheck_run = contents
    assert helper == {"modules/helper.py": b"VALUE = 42\n"}
    assert "opt/flowstore/runtime/flowstore/flow.py" in runtime
    assert "opt/flowstore/runtime/cloudpickle/__init__.py" in runtime
    assert "opt/flowstore/healthcheck.py" in runtime
    assert not any("__pycache__" in name for name in runtime)
    by_name = {f.name: f for f in built.flows}
    assert alpha == {"opt/prefect/flows/alpha.prefect": by_name["alpha"].data}  # one layer per flow
    assert beta == {"opt/prefect/flows/beta.py": by_name["beta"].data}
    assert gamma == {"opt/prefect/flows/gamma.prefect": by_name["gamma"].data}
    assert json.loads(flows_json["opt/flowstore/flows.json"])[0]["name"] == "alpha"


def test_read_flow_and_get_flow_without_the_daemon(built: Built, docker_env: dict[str, str]) -> None:
    # a fresh storage as an agent rebuilds it: serialized config + StoredFlow state, a daemon that is gone
    doc = built.storage.serialize()
    assert docker_env["password"] not in json.dumps(doc)
    assert doc["imageDigest"] == built.image.digest and doc["registryURL"] == docker_env["registry"]
    secret = {".dockerconfigjson": json.dumps({"auths": {docker_env["registry"]: {"auth": base64.b64encode(
        f"{docker_env['username']}:{docker_env['password']}".encode()).decode()}}})}
    agent = Docker.from_config({**doc, "daemonURL": f"tcp://127.0.0.1:{_closed_port()}"}, credentials=secret)
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


def test_changing_one_flow_changes_only_its_layer_and_later_ones(built: Built, registry: Registry) -> None:
    storage = built.storage
    flows = list(built.flows)
    flows[1] = ImageFlow("beta", flows[1].location, script_source("beta", f"beta v2 {uuid.uuid4().hex}"))
    start = time.monotonic()
    image = storage.build_image(flows)
    print(f"rebuild after one flow changed: {time.monotonic() - start:.1f}s")
    assert image.pushed and image.digest != built.image.digest and image.tag != built.image.tag
    old = [layer["digest"] for layer in registry.manifest(storage.repository, built.image.digest)["layers"]]
    new = [layer["digest"] for layer in registry.manifest(storage.repository, image.digest)["layers"]]
    assert len(old) == len(new)
    beta_index = len(new) - 4  # ..., alpha, beta, gamma, flows.json, healthcheck
    assert new[:beta_index] == old[:beta_index], "layers before the changed flow must be reused"
    assert new[beta_index] != old[beta_index]
    assert registry.layer_files(storage.repository, new[beta_index]) == {"opt/prefect/flows/beta.py": flows[1].data}
    assert storage.read_flow(image.digest, flows[2].location) == flows[2].data
    assert storage.get_flow(flows[1].location, flow_name="beta").run().startswith("beta v2 ")


def test_corrupted_blob_is_refused(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, ignore_healthchecks=True)
    flow = ImageFlow("solo", storage.location_for("solo"), pickled_flow("solo", uuid.uuid4().hex))
    image = storage.build_image([flow])
    manifest = Registry(docker_env).manifest(storage.repository, image.digest)
    flow_layer = manifest["layers"][-1]["digest"]  # no healthcheck: the flow's COPY is the top layer
    state_dir = Path(os.environ.get("FLOWSTORE_LOCALCLOUD_DIR") or ROOT / ".localcloud")
    hexdigest = flow_layer.removeprefix("sha256:")
    blob = state_dir / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] \
        / hexdigest / "data"
    if not blob.exists():
        pytest.skip(f"the registry's storage is not at {blob}")
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
    storage = make_storage(docker_env, registry_url=f"127.0.0.1:{_closed_port()}")
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
    assert wrong not in message and wrong not in repr(storage) and wrong not in json.dumps(storage.serialize())


def test_daemon_unreachable(docker_env: dict[str, str]) -> None:
    storage = make_storage(docker_env, base_url=f"tcp://127.0.0.1:{_closed_port()}")
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
    assert "pa:ss" not in json.dumps(storage.serialize())
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
    assert storage.serialize()["flows"] == {"seed flow": location}
