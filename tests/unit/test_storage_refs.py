"""The ConfigMaps and Secrets a FlowStorage block names are what its Storage class declares
(``Storage.config_refs``); the reconcile core reads them through the ports and knows no
backend's fields."""

from __future__ import annotations

import base64
import inspect

import pytest

from flowstore.api.constants import Reason
from flowstore.api.models import StorageSpec
from flowstore.reconcile import storages
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.storages import resolve_refs
from flowstore.storage import backend_class
from flowstore.storage.refs import FileRefs, KeyRef, SecretKeys
from tests.fakes.ports import FakeCluster


def cm(name: str, data: dict[str, str] | None = None, binary: dict[str, bytes] | None = None) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": "7"}, "data": data or {},
            "binaryData": {k: base64.b64encode(v).decode() for k, v in (binary or {}).items()}}


def docker_spec(**block: object) -> StorageSpec:
    return StorageSpec.parse({"docker": {"registryURL": "127.0.0.1:5000", **block}})


def test_docker_declares_its_dockerfile_files_and_daemon_tls() -> None:
    declared = backend_class("docker").config_refs
    assert KeyRef("dockerfile", text=True) in declared
    assert FileRefs("files") in declared
    assert any(isinstance(r, SecretKeys) and r.field == "daemonTLSSecretRef" and r.into == "daemonTLS"
               for r in declared)
    assert backend_class("s3").config_refs == ()


def test_git_hosted_storages_declare_their_verify_secret_by_path() -> None:
    """spec.<git backend>.verify.secretRef: a path into the block; the storage gets the SSH allowed
    signers and the OpenPGP keys (*.asc) as verifyKeys, nothing else of the Secret."""
    for key in ("git", "github", "gitlab", "bitbucket", "codecommit"):
        assert any(isinstance(r, SecretKeys) and r.field == "verify.secretRef" and r.into == "verifyKeys"
                   for r in backend_class(key).config_refs), key
    cluster = FakeCluster()
    cluster.secrets["trusted"] = {"metadata": {"uid": "v", "resourceVersion": "9"},
                                  "data": {"allowed_signers": "dev@x ssh-ed25519 AAAA", "team.asc": "PGP",
                                           "password": "not for the storage"}}
    spec = StorageSpec.parse({"git": {"url": "https://git.example/r.git",
                                      "verify": {"mode": "HEAD", "secretRef": {"name": "trusted"}}}})
    resolved, version = resolve_refs(cluster, "ns", spec)
    assert resolved.config["verifyKeys"] == {"allowed_signers": "dev@x ssh-ed25519 AAAA", "team.asc": "PGP"}
    assert version == "Secret/trusted@9"
    with pytest.raises(ReconcileError, match=r"spec\.git\.verify\.secretRef.*allowed_signers"):
        resolve_refs(FakeCluster(), "ns", spec)


def test_what_the_declaration_names_is_read_and_put_in_place() -> None:
    cluster = FakeCluster()
    cluster.configmaps["image"] = cm("image", {"Dockerfile": "FROM base\n", "conf.yaml": "a: 1\n"},
                                     binary={"logo.png": b"\x89PNG\x00"})
    cluster.secrets["token"] = {"metadata": {"uid": "s", "resourceVersion": "3"}, "data": {"token": "t0k"}}
    cluster.secrets["tls"] = {"metadata": {"uid": "t", "resourceVersion": "4"},
                              "data": {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY", "other": "no"}}
    spec = docker_spec(
        dockerfile={"configMapRef": {"name": "image", "key": "Dockerfile"}},
        files=[{"path": "/etc/conf.yaml", "configMapRef": {"name": "image", "key": "conf.yaml"}},
               {"path": "/etc/logo.png", "configMapRef": {"name": "image", "key": "logo.png"}},
               {"path": "/etc/token", "secretRef": {"name": "token", "key": "token"}}],
        daemonTLSSecretRef={"name": "tls"})
    resolved, version = resolve_refs(cluster, "ns", spec)
    assert resolved.config["dockerfile"] == "FROM base\n"
    assert resolved.config["files"] == {"/etc/conf.yaml": b"a: 1\n", "/etc/logo.png": b"\x89PNG\x00",
                                        "/etc/token": b"t0k"}
    assert resolved.config["daemonTLS"] == {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"}
    assert "ConfigMap/image@7" in version and "Secret/token@3" in version and "Secret/tls@4" in version
    # the storage class takes exactly what the core put in place
    storage = backend_class("docker").from_config(resolved.config)
    assert storage.dockerfile == "FROM base\n"


def test_a_missing_object_or_key_stalls_naming_the_field() -> None:
    cluster = FakeCluster()
    spec = docker_spec(files=[{"path": "/a", "configMapRef": {"name": "nope", "key": "k"}}])
    with pytest.raises(ReconcileError) as missing:
        resolve_refs(cluster, "ns", spec)
    assert missing.value.failure.reason == Reason.SOURCE_NOT_FOUND and missing.value.failure.stalled
    assert "spec.docker.files[0]" in missing.value.failure.message
    cluster.configmaps["nope"] = cm("nope", {"other": "x"})
    with pytest.raises(ReconcileError, match="has no key 'k'"):
        resolve_refs(cluster, "ns", spec)
    with pytest.raises(ReconcileError, match=r"create it with ca\.crt, tls\.crt and tls\.key"):
        resolve_refs(cluster, "ns", docker_spec(daemonTLSSecretRef={"name": "absent"}))


def test_a_block_naming_nothing_reads_nothing() -> None:
    class Refusing(FakeCluster):
        def get_configmap(self, namespace: str, name: str) -> None:
            raise AssertionError("read a ConfigMap")

        def get_secret(self, namespace: str, name: str) -> None:
            raise AssertionError("read a Secret")

    spec = docker_spec()
    assert resolve_refs(Refusing(), "ns", spec) == (spec, "")
    local = StorageSpec.parse({"local": {"directory": "/tmp/x"}})
    assert resolve_refs(Refusing(), "ns", local) == (local, "")


def test_the_core_names_no_backend_field() -> None:
    source = inspect.getsource(storages)
    for field in ("dockerfile", "daemonTLS", '"files"'):
        assert field not in source
