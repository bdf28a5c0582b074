"""Verified git sources end to end (docs/signing.md): the real operator against the real git server
(git http-backend): a signed push is pinned and SourceVerified names the key; an unsigned push and
a push signed by an unknown key keep the last verified pin, with Ready=False VerificationFailed
and a Warning Event; a tag signed by an unknown key is refused; the same through the GitHub
contract fake (the operator reads the raw commit, never GitHub's verdict)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore import client
from tests.backends.git_conformance import flow_script
from tests.fakes.github_api import GitHubAPI
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.gitsigning import GPGSigner, SSHSigner
from tests.helpers.kube import apply, condition, get, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import manifests, secret  # Secrets opted in (flowstore.dev/allow=true)
from tests.helpers.operator import OperatorProcess

TOKEN = "ghp_verifyE2eToken0123456789abcdef"


def storage(namespace: str, backend: str, block: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
            "metadata": {"name": "repo", "namespace": namespace}, "spec": {backend: block, "interval": "1s"}}


def stored_flow(namespace: str, name: str, path: str) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageRef": {"name": "repo"}, "flowName": "etl", "source": {"path": path}}}


def events(namespace: str, reason: str) -> list[str]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector", f"reason={reason}",
                  "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}").stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("signers")
    made = {"alice": SSHSigner.create(directory, "alice@example.com"),
            "mallory": SSHSigner.create(directory, "mallory@example.com"),
            "bob": GPGSigner.create(directory, "Bob", "bob@example.com")}
    yield made
    made["bob"].stop_agent()


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    kubectl("delete", "storedflows,flowstorages", "--all", "-n", namespace, "--wait=false", check=False)


def git_creds(namespace: str, git_server: dict[str, str]) -> dict[str, Any]:
    return secret(namespace, "git-creds", {"GIT_USERNAME": git_server["username"],
                                           "GIT_PASSWORD": git_server["password"]})


def trusted(namespace: str, signers: dict[str, Any]) -> dict[str, Any]:
    return secret(namespace, "signers", {"allowed_signers": signers["alice"].allowed_signers(),
                                         "bob.asc": signers["bob"].armored()})


def test_only_signed_pushes_are_pinned(operator: OperatorProcess, namespace: str, git_server: dict[str, str],
                                       signers: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    repo = LocalGitRepo(Path(git_server["root"]))
    url = f"{git_server['url']}/{repo.name}.git"
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)}, signer=signers["alice"])
    apply(manifests(
        git_creds(namespace, git_server),
        trusted(namespace, signers),
        storage(namespace, "git", {"url": url, "ref": "main", "credentialsSecretRef": {"name": "git-creds"},
                                   "verify": {"mode": "HEAD", "secretRef": {"name": "signers"}}}),
        stored_flow(namespace, "etl", "flows/etl.py")))
    pinned = wait_ready(namespace, "etl")
    verified = condition(pinned, "SourceVerified")
    print(f"SourceVerified: {verified}")
    assert verified["status"] == "True" and signers["alice"].fingerprint in verified["message"]
    assert pinned["status"]["git"]["commit"] == first
    assert pinned["status"]["git"]["verification"] == {
        "mode": "HEAD", "commit": first, "commitKey": f"SSH key {signers['alice'].fingerprint} (alice@example.com)"}
    monkeypatch.setenv("GIT_USERNAME", git_server["username"])
    monkeypatch.setenv("GIT_PASSWORD", git_server["password"])
    assert client.load_flow("etl", namespace).run() == 1

    # an unsigned push: not pinned; the last verified pin stays, and agents keep loading it
    unsigned = repo.commit({"flows/etl.py": flow_script("etl", 2)})
    refused = wait_reason(namespace, "etl", "VerificationFailed", timeout=30)
    print(f"unsigned: {condition(refused)['message']}")
    assert f"commit {unsigned[:12]} is not signed" in condition(refused)["message"]
    assert refused["status"]["git"]["commit"] == first
    assert condition(refused, "SourceVerified")["status"] == "False"
    assert condition(refused, "Stalled")["status"] == "True"
    assert client.load_flow("etl", namespace).run() == 1
    assert any(unsigned[:12] in m for m in events(namespace, "VerificationFailed"))

    # signed by a key the Secret does not hold: refused, naming the key
    by_mallory = repo.commit({"flows/etl.py": flow_script("etl", 3)}, signer=signers["mallory"])
    refused = wait_for("storedflow", namespace, "etl",
                       lambda o: by_mallory[:12] in condition(o).get("message", ""), timeout=60)
    assert signers["mallory"].fingerprint in condition(refused)["message"]
    assert refused["status"]["git"]["commit"] == first

    # a signed push (OpenPGP this time) fixes it: pinned, SourceVerified names bob's key
    by_bob = repo.commit({"flows/etl.py": flow_script("etl", 4)}, signer=signers["bob"])
    moved = wait_for("storedflow", namespace, "etl",
                     lambda o: (o.get("status") or {}).get("git", {}).get("commit") == by_bob
                     and condition(o).get("status") == "True", timeout=60)
    assert signers["bob"].fingerprint in condition(moved, "SourceVerified")["message"]
    assert client.load_flow("etl", namespace).run() == 4


def test_a_tag_signed_by_an_unknown_key_is_refused(operator: OperatorProcess, namespace: str,
                                                   git_server: dict[str, str], signers: dict[str, Any]) -> None:
    repo = LocalGitRepo(Path(git_server["root"]))
    url = f"{git_server['url']}/{repo.name}.git"
    commit = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    repo.tag("v1", commit, message="release 1", signer=signers["mallory"])
    apply(manifests(
        git_creds(namespace, git_server),
        trusted(namespace, signers),
        storage(namespace, "git", {"url": url, "ref": "v1", "credentialsSecretRef": {"name": "git-creds"},
                                   "verify": {"mode": "Tag", "secretRef": {"name": "signers"}}}),
        stored_flow(namespace, "etl", "flows/etl.py")))
    refused = wait_reason(namespace, "etl", "VerificationFailed", timeout=30)
    message = condition(refused)["message"]
    print(f"tag by mallory: {message}")
    assert re.search(rf"tag \w+ is signed by SSH key {re.escape(signers['mallory'].fingerprint)}", message)
    assert "git" not in refused["status"] and "artifact" not in refused["status"]  # nothing was ever pinned

    repo.tag("v1", commit, message="release 1, re-signed", signer=signers["bob"])
    pinned = wait_ready(namespace, "etl", timeout=60)
    assert pinned["status"]["git"]["verification"]["tag"] == "v1"
    assert signers["bob"].fingerprint in pinned["status"]["git"]["verification"]["tagKey"]


def test_github_serves_the_same_commits_and_is_never_believed(
        operator: OperatorProcess, namespace: str, signers: dict[str, Any], tmp_path: Path) -> None:
    repo = LocalGitRepo(tmp_path)
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)}, signer=signers["alice"])
    with GitHubAPI(token=TOKEN) as api:
        assert isinstance(api, GitHubAPI)
        api.add_repo("acme/flows", repo)
        apply(manifests(
            secret(namespace, "gh", {"GITHUB_ACCESS_TOKEN": TOKEN}), trusted(namespace, signers),
            storage(namespace, "github", {"repo": "acme/flows", "ref": "main", "apiURL": api.url,
                                          "credentialsSecretRef": {"name": "gh"},
                                          "verify": {"secretRef": {"name": "signers"}}}),
            stored_flow(namespace, "etl", "flows/etl.py")))
        assert wait_ready(namespace, "etl")["status"]["git"]["commit"] == first
        # the fake says "verified: true" for mallory's commit, as GitHub would for any key an
        # account uploaded; the operator checks the raw commit itself and refuses it
        repo.commit({"flows/etl.py": flow_script("etl", 2)}, signer=signers["mallory"])
        refused = wait_reason(namespace, "etl", "VerificationFailed", timeout=30)
        assert signers["mallory"].fingerprint in condition(refused)["message"]
        assert refused["status"]["git"]["commit"] == first
        assert any(r.path.endswith(f"/git/commits/{first}") for r in api.log)
        assert os.environ.get("GITHUB_ACCESS_TOKEN") is None
        assert get("storedflow", namespace, "etl")["status"]["git"]["commit"] == first
