"""Where an agent's credentials may go (flowstore.agent.trust): a StoredFlow's status against its
FlowStorage's spec, or the agent's own list of trusted storages.

Every backend's status, as the operator writes it from a spec (the storage built the operator's
way, ``from_config(spec block, credentials)``, then ``to_status()`` and the per-revision state),
is accepted against that spec; changing any one place field of it (an endpoint, a bucket, a
host, a key prefix, ...) is refused, naming both places; and what the agent builds its storage
from carries nothing the check did not look at."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest

from flowstore.agent import trust
from flowstore.agent.errors import StatusError, TrustUnavailable, UntrustedLocation
from flowstore.agent.status import StoredFlowView, parse
from flowstore.api.backends import BACKENDS, STATUS_FIELDS
from flowstore.storage import backend_class, from_serialized

AWS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
AZURITE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=eA==;"
           "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1")
COMMIT = "3f2c" * 10
DIGEST = "sha256:" + "ab" * 32


def cases(tmp: Path) -> dict[str, tuple[dict[str, Any], Any, dict[str, Any], str]]:
    """backend key -> (spec block, credentials, revision state the operator adds, location)."""
    directory = str(tmp / "flows")
    return {
        "local": ({"directory": directory, "volumeName": "pvc"}, None, {}, f"{directory}/etl/2026"),
        "s3": ({"bucket": "flows", "keyPrefix": "prod/", "region": "eu-west-1", "endpointURL": "http://127.0.0.1:5000/",
                "credentialsSecretRef": {"name": "aws"}}, AWS, {}, "prod/etl/2026"),
        "gcs": ({"bucket": "flows", "keyPrefix": "prod", "project": "p", "endpointURL": "http://127.0.0.1:4443"},
                None, {}, "prod/etl/2026"),
        "azure": ({"container": "flows", "keyPrefix": "prod/", "accountURL": "http://127.0.0.1:10000/devstoreaccount1/"},
                  None, {}, "prod/etl/2026"),
        "webhook": ({"buildRequest": {"method": "POST", "url": "https://flows.example.com/flows",
                                      "headers": {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}},
                     "getFlowRequest": {"method": "GET", "url": "https://flows.example.com/flows/${response.json.id}"},
                     "deleteRequest": {"url": "https://flows.example.com/flows/${response.json.id}"},
                     "credentialsSecretRef": {"name": "hook"}}, {"WEBHOOK_TOKEN": "x"},
                    {"buildResponse": {"status": 201, "json": {"id": "42"}}}, "etl"),
        "docker": ({"registryURL": "127.0.0.1:5000/team", "imageName": "flows"}, None,
                   {"imageName": "127.0.0.1:5000/team/flows", "imageTag": "t1", "imageDigest": DIGEST},
                   "/opt/prefect/flows/etl.py"),
        "oci": ({"repository": "127.0.0.1:5000/flows/etl", "plainHTTP": True, "credentialsSecretRef": {"name": "push"}},
                None, {"imageDigest": DIGEST}, "flow.py"),
        "github": ({"repo": "acme/flows", "path": "flows/etl.py", "ref": "main", "host": "github.example.com"},
                   {"GITHUB_ACCESS_TOKEN": "t"}, {"ref": COMMIT, "requestedRef": "main"}, "flows/etl.py"),
        "gitlab": ({"repo": "acme/flows", "host": "gitlab.example.com", "ref": "main"},
                   {"GITLAB_ACCESS_TOKEN": "t"}, {"ref": COMMIT, "requestedRef": "main"}, "etl.py"),
        "bitbucket": ({"workspace": "acme", "repo": "flows", "ref": "main"}, {},
                      {"ref": COMMIT, "requestedRef": "main", "bundleEntrypoint": "etl/main.py",
                       "bundleIgnore": ["tests/"]}, "etl"),
        "codecommit": ({"repo": "flows", "region": "eu-west-1", "commit": "main", "clientOptions": {"use_ssl": True}},
                       AWS, {"commit": COMMIT, "requestedRef": "main"}, "etl.py"),
        "git": ({"url": "https://git.example.com/team/flows.git", "ref": "main"}, {},
                {"ref": COMMIT, "requestedRef": "main"}, "flows/etl.py"),
    }


def operator_status(key: str, block: dict[str, Any], credentials: Any, state: dict[str, Any],
                    location: str) -> dict[str, Any]:
    """status.storage as the operator writes it (reconcile/context.py: ready)."""
    storage = backend_class(key).from_config(block, credentials=credentials)
    doc = storage.to_status()
    doc["flows"] = {"etl daily": location}
    doc.update(state)
    return doc


def view(storage: dict[str, Any], location: str, *, key: str | None = None, namespace: str = "data") -> StoredFlowView:
    spec: dict[str, Any] = {"storageRef": {"name": "store"}}
    if key:
        spec["key"] = key
    status = {"location": location, "flowName": "etl daily", "storage": storage,
              "artifact": {"digest": "sha256:" + hashlib.sha256(b"x").hexdigest(), "size": 1, "format": "script",
                           "url": "u"}}
    return parse({"spec": spec, "status": status}, namespace=namespace, name="etl")


def flowstorage(key: str, block: dict[str, Any]) -> trust.TrustedLocation:
    return trust.from_flowstorage({"spec": {key: block, "deletionPolicy": "Retain"}}, namespace="data", name="store")


def test_every_backend_declares_its_status_fields() -> None:
    assert {b.class_name for b in BACKENDS} == set(STATUS_FIELDS)


@pytest.mark.parametrize("key", [b.key for b in BACKENDS])
def test_what_the_operator_writes_from_a_spec_is_trusted_against_that_spec(tmp_path: Path, key: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    block, credentials, state, location = cases(tmp_path)[key]
    storage = operator_status(key, block, credentials, state, location)
    trusted = flowstorage(key, block)
    assert trust.check(view(storage, location), [trusted]) is trusted
    doc = trust.agent_storage(view(storage, location), trusted)
    rebuilt = from_serialized(doc)  # what the agent talks to: the same place
    assert type(rebuilt).__name__ == trusted.type


@pytest.mark.parametrize("key", [b.key for b in BACKENDS])
def test_any_place_field_changed_in_the_status_is_refused_naming_both_places(
        tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    block, credentials, state, location = cases(tmp_path)[key]
    storage = operator_status(key, block, credentials, state, location)
    trusted = flowstorage(key, block)
    fields = STATUS_FIELDS[trusted.type]
    for field in fields.place:
        edited = copy.deepcopy(storage)
        value = edited.get(field)
        if isinstance(value, dict):  # a webhook request: another URL, same templates
            edited[field] = {**value, "url": "http://127.0.0.1:9/steal?t=${WEBHOOK_TOKEN}"}
        elif field == "clientOptions":
            edited[field] = {"endpoint_url": "http://127.0.0.1:9"}
        else:
            edited[field] = "http://attacker.example:9/x" if value is None or "://" in str(value) else f"{value}x"
        with pytest.raises(UntrustedLocation) as refused:
            trust.check(view(edited, location), [trusted])
        message = str(refused.value)
        assert field in message and "FlowStorage data/store" in message and "nothing was requested" in message
        assert "Bearer" not in message, "request headers (which may hold literal tokens) are never shown"


def test_the_type_must_match(tmp_path: Path) -> None:
    with pytest.raises(UntrustedLocation, match="the type is Git in the status but S3"):
        trust.check(view({"type": "Git", "url": "https://x/y.git"}, "a.py"),
                    [flowstorage("s3", {"bucket": "flows"})])


def test_the_location_must_be_under_the_trusted_prefix_or_the_chosen_key(tmp_path: Path) -> None:
    s3 = {"type": "S3", "bucket": "flows", "keyPrefix": "prod/"}
    trusted = flowstorage("s3", {"bucket": "flows", "keyPrefix": "prod/"})
    trust.check(view(s3, "prod/etl/1"), [trusted])
    with pytest.raises(UntrustedLocation, match="not under the key prefix prod/"):
        trust.check(view(s3, "other-team/etl/1"), [trusted])
    # spec.key (the tenant's choice) is the one location allowed, prefix or not
    trust.check(view(s3, "exact/key.py", key="exact/key.py"), [trusted])
    with pytest.raises(UntrustedLocation, match=r"is not the key 'exact/key\.py'"):
        trust.check(view(s3, "prod/etl/1", key="exact/key.py"), [trusted])
    local = {"type": "Local", "directory": str(tmp_path)}
    with pytest.raises(UntrustedLocation, match="outside the directory"):
        trust.check(view(local, "/dev/zero"), [flowstorage("local", {"directory": str(tmp_path)})])
    with pytest.raises(UntrustedLocation, match="outside the directory"):
        trust.check(view(local, "../../etc/passwd"), [flowstorage("local", {"directory": str(tmp_path)})])


def test_fields_the_check_does_not_know_never_reach_the_storage() -> None:
    s3 = {"type": "S3", "bucket": "flows", "clientOptions": {"endpoint_url": "http://127.0.0.1:9"},
          "allowedEnv": ["AWS_SECRET_ACCESS_KEY"], "buildResponse": {"json": {"id": "x"}}}
    trusted = flowstorage("s3", {"bucket": "flows", "clientOptions": {"endpoint_url": "http://127.0.0.1:9"}})
    doc = trust.agent_storage(view(s3, "etl"), trust.check(view(s3, "etl"), [trusted]))
    assert set(doc) == {"type", "bucket", "storedAsScript", "flows"}
    assert from_serialized(doc).client_options == {}  # type: ignore[attr-defined]


def test_revision_fields_of_the_wrong_type_are_status_errors() -> None:
    git = {"type": "Git", "url": "https://git.example.com/flows.git", "ref": {"not": "text"}}
    trusted = flowstorage("git", {"url": "https://git.example.com/flows.git"})
    with pytest.raises(StatusError, match=r"status.storage.ref is dict"):
        trust.agent_storage(view(git, "a.py"), trust.check(view(git, "a.py"), [trusted]))


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/pwned", "main", "a b", "-", ""])
def test_a_pinned_git_ref_must_be_a_commit_id_never_an_option(ref: str) -> None:
    git = {"type": "Git", "url": "https://git.example.com/flows.git", "ref": ref, "requestedRef": "main"}
    trusted = flowstorage("git", {"url": "https://git.example.com/flows.git"})
    with pytest.raises(StatusError):
        trust.agent_storage(view(git, "a.py"), trust.check(view(git, "a.py"), [trusted]))
    unpinned = {"type": "Git", "url": "https://git.example.com/flows.git", "ref": "--upload-pack=x"}
    with pytest.raises(StatusError):
        trust.agent_storage(view(unpinned, "a.py"), trust.check(view(unpinned, "a.py"), [trusted]))


def test_an_azure_account_the_flowstorage_does_not_name_must_be_the_agents_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A FlowStorage with a connection-string Secret names no account in its spec; the status
    carries the account the operator's Secret named. The agent accepts it only when its own
    connection string names the same account (its requests go there either way)."""
    storage = {"type": "Azure", "container": "flows", "accountURL": "http://127.0.0.1:10000/devstoreaccount1"}
    trusted = flowstorage("azure", {"container": "flows", "credentialsSecretRef": {"name": "azure"}})
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(UntrustedLocation, match="accountURL"):
        trust.check(view(storage, "etl"), [trusted])
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", AZURITE)
    trust.check(view(storage, "etl"), [trusted])
    evil = {**storage, "accountURL": "https://attacker.blob.core.windows.net"}
    with pytest.raises(UntrustedLocation, match="attacker"):
        trust.check(view(evil, "etl"), [trusted])


def test_a_docker_image_in_another_registry_is_refused() -> None:
    block = {"registryURL": "127.0.0.1:5000/team", "imageName": "flows"}
    status = {"type": "Docker", **block, "imageName": "127.0.0.1:5000/team/flows", "imageDigest": DIGEST}
    trust.check(view(status, "/opt/prefect/flows/etl.py"), [flowstorage("docker", block)])
    for image in ("attacker.example/team/flows", "127.0.0.1:5000/other/flows", "127.0.0.1:5000/team/else"):
        with pytest.raises(UntrustedLocation, match="imageName"):
            trust.check(view({**status, "imageName": image}, "/opt/prefect/flows/etl.py"),
                        [flowstorage("docker", block)])


# --------------------------------------------------------------------------- the agent's own list
def test_the_allowlist_is_flowstorage_blocks_optionally_per_namespace(tmp_path: Path) -> None:
    text = """
- s3: {bucket: flows, keyPrefix: prod/, region: eu-west-1}
  namespaces: [data]
- git: {url: https://git.example.com/team/flows.git}
"""
    s3 = {"type": "S3", "bucket": "flows", "keyPrefix": "prod/", "region": "eu-west-1"}
    source = trust.allowlist_source({trust.ALLOWLIST_ENV: text})
    assert trust.trusted_location(view(s3, "prod/etl/1"), [source]).source == f"entry 1 of {trust.ALLOWLIST_ENV}"
    with pytest.raises(UntrustedLocation, match=r"entry 2 of .*type is S3 in the status but Git.*add it to FLOWSTORE"):
        trust.trusted_location(view(s3, "prod/etl/1", namespace="other"), [source])
    with pytest.raises(UntrustedLocation, match="bucket"):
        trust.trusted_location(view({**s3, "bucket": "other"}, "prod/etl/1"), [source])
    file = tmp_path / "trusted.yaml"
    file.write_text(text)
    from_file = trust.allowlist_source({trust.ALLOWLIST_ENV: str(file)})
    trust.trusted_location(view(s3, "prod/etl/1"), [from_file])
    # unset: it says nothing, the next source (the FlowStorage) decides
    assert trust.allowlist_source({})(view(s3, "prod/etl/1")) is None


@pytest.mark.parametrize("text", ["", "  ", "{not: [valid", "s3: {bucket: x}", "- {s3: {bucket: x}, gcs: {bucket: y}}",
                                  "- {nfs: {path: /x}}", "- {s3: {bucket: x}, namespaces: data}", "- 3"])
def test_a_malformed_allowlist_is_an_error_not_an_open_door(text: str) -> None:
    source = trust.allowlist_source({trust.ALLOWLIST_ENV: text})
    with pytest.raises(TrustUnavailable):
        source(view({"type": "S3", "bucket": "x"}, "etl"))


def test_a_flowstorage_without_one_backend_block_vouches_for_nothing() -> None:
    for spec in ({}, {"s3": {"bucket": "a"}, "gcs": {"bucket": "b"}}, {"s3": "flows"}):
        with pytest.raises(TrustUnavailable):
            trust.from_flowstorage({"spec": spec}, namespace="data", name="store")
