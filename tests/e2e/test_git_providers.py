"""GitHub, GitLab, Bitbucket (Cloud and Server) and CodeCommit end to end: the real operator
and kube-apiserver against the providers' contract fakes (tests/fakes/, no local servers
exist for these APIs), each serving a real git repository. A FlowStorage per provider points
its apiURL / endpointURL at the fake; the StoredFlow is pinned; an agent loads it back; a
rate limit is a temporary condition that retries at the reset time the provider gave."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore import client
from tests.backends.git_conformance import flow_script
from tests.fakes.base import FakeServer
from tests.fakes.bitbucket_api import BitbucketCloudAPI, BitbucketServerAPI
from tests.fakes.codecommit_api import CodeCommitAPI
from tests.fakes.github_api import GitHubAPI
from tests.fakes.gitlab_api import GitLabAPI
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.kube import apply, condition, delete_flows, get, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import secret
from tests.helpers.operator import OperatorProcess

TOKEN = "canary-provider-token-5e0c-do-not-leak"
KEY_ID = "AKIAFLOWSTORETEST"


@dataclasses.dataclass
class Provider:
    fake: FakeServer
    block: dict[str, Any]  # the FlowStorage's backend block, without credentialsSecretRef
    backend: str
    secret: dict[str, str]  # Secret data; also the agent's environment
    rate_limit: Callable[[int, int], object]  # (requests, seconds until reset)


def make_provider(name: str, repo: LocalGitRepo) -> Provider:
    if name == "github":
        gh = GitHubAPI(token=TOKEN)
        gh.add_repo("acme/flows", repo)
        return Provider(gh, {"repo": "acme/flows", "ref": "main"}, "github", {"GITHUB_ACCESS_TOKEN": TOKEN},
                        lambda n, s: gh.rate_limit(n, s))
    if name == "gitlab":
        gl = GitLabAPI(token=TOKEN)
        gl.add_project("data/flows", repo)
        return Provider(gl, {"repo": "data/flows", "ref": "main"}, "gitlab", {"GITLAB_ACCESS_TOKEN": TOKEN},
                        lambda n, s: gl.rate_limit(n, s))
    if name == "bitbucket-cloud":
        bc = BitbucketCloudAPI(username="me", app_password=TOKEN)
        bc.add_repo("team", "flows", repo)
        return Provider(bc, {"workspace": "team", "repo": "flows", "ref": "main"}, "bitbucket",
                        {"BITBUCKET_USERNAME": "me", "BITBUCKET_APP_PASSWORD": TOKEN},
                        lambda n, s: bc.rate_limit(n, s))
    if name == "bitbucket-server":
        bs = BitbucketServerAPI(token=TOKEN)
        bs.add_repo("DATA", "flows", repo)
        return Provider(bs, {"project": "DATA", "repo": "flows", "host": "bitbucket.example.com", "ref": "main"},
                        "bitbucket", {"BITBUCKET_ACCESS_TOKEN": TOKEN}, lambda n, s: bs.rate_limit(n, s))
    cc = CodeCommitAPI(access_key_id=KEY_ID)
    cc.add_repo("flows", repo)
    return Provider(cc, {"repo": "flows", "commit": "main", "region": "us-east-1"}, "codecommit",
                    {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": TOKEN},
                    lambda n, s: cc.throttle(n))


def endpoint(provider: Provider) -> dict[str, str]:
    url = provider.fake.url
    if provider.backend == "codecommit":
        return {"endpointURL": url}
    if provider.backend == "gitlab":
        return {"apiURL": f"{url}/api/v4"}
    if provider.backend == "bitbucket":
        return {"apiURL": f"{url}/rest/api/1.0" if "project" in provider.block else f"{url}/2.0"}
    return {"apiURL": url}


def manifests(namespace: str, provider: Provider, *, interval: str = "1s") -> str:
    docs = [
        secret(namespace, "provider-creds", provider.secret),
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
         "metadata": {"name": "repo", "namespace": namespace},
         "spec": {provider.backend: {**provider.block, **endpoint(provider),
                                     "credentialsSecretRef": {"name": "provider-creds"}},
                  "interval": interval}},
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
         "metadata": {"name": "etl", "namespace": namespace},
         "spec": {"storageRef": {"name": "repo"}, "flowName": "etl", "source": {"path": "flows/etl.py"}}},
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def file_reads(provider: Provider) -> int:
    """How many times the fake served a file's content (the provider's file endpoint)."""
    markers = {"github": "/contents/", "gitlab": "/repository/files/", "bitbucket": ("/src/", "/raw/")}
    if provider.backend == "codecommit":
        return sum(r.headers.get("x-amz-target", "").endswith(".GetFile") for r in provider.fake.log)
    wanted = markers[provider.backend]
    wanted = (wanted,) if isinstance(wanted, str) else wanted
    return sum(any(m in r.path for m in wanted) for r in provider.fake.log)


PROVIDERS = ["github", "gitlab", "bitbucket-cloud", "bitbucket-server", "codecommit"]


@pytest.fixture
def repo(tmp_path: Path) -> LocalGitRepo:
    return LocalGitRepo(tmp_path)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest, repo: LocalGitRepo) -> Iterator[Provider]:
    made = make_provider(request.param, repo)
    with made.fake:
        yield made


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    delete_flows(namespace)


def test_pinned_through_the_provider_api_and_loaded_back(
        operator: OperatorProcess, namespace: str, repo: LocalGitRepo, provider: Provider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    apply(manifests(namespace, provider))
    status = wait_ready(namespace, "etl")["status"]
    print(f"{provider.backend}: {condition(get('storedflow', namespace, 'etl'))['message']}")
    assert status["git"]["commit"] == first and status["git"]["path"] == "flows/etl.py"
    assert status["storage"]["type"] in {"GitHub", "GitLab", "Bitbucket", "CodeCommit"}
    for key, value in provider.secret.items():  # the agent's own credentials
        monkeypatch.setenv(key, value)
    if provider.backend == "codecommit":
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert client.load_flow("etl", namespace).run() == 1
    # Steady state (interval 1 s): the ref is resolved again, the pinned file is not read again.
    reads = file_reads(provider)
    time.sleep(3)
    assert file_reads(provider) == reads, "an unchanged commit must not be read again"
    second = repo.commit({"flows/etl.py": flow_script("etl", 2)})
    wait_for("storedflow", namespace, "etl", lambda o: o["status"]["git"]["commit"] == second, timeout=20)
    assert client.load_flow("etl", namespace).run() == 2
    text = json.dumps(json.loads(kubectl("get", "storedflows,flowstorages,events", "-n", namespace,
                                         "-o", "json").stdout))
    assert TOKEN not in text and TOKEN not in operator.logs()


@pytest.mark.parametrize("provider", ["github", "gitlab", "bitbucket-cloud", "bitbucket-server"], indirect=True)
def test_rate_limit_is_temporary_and_retried_at_the_reset(
        operator: OperatorProcess, namespace: str, repo: LocalGitRepo, provider: Provider) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    provider.rate_limit(10_000, 4)  # every request is refused until the window resets in 4 s
    started = time.monotonic()
    apply(manifests(namespace, provider, interval="10m"))
    limited = wait_reason(namespace, "etl", "RateLimited")
    message = condition(limited)["message"]
    print(f"{provider.backend}: {message}")
    assert "rate limited" in message and condition(limited, "Stalled") == {}
    # Retried at the reset the provider gave (not the 10m interval, not a tight loop).
    wait_ready(namespace, "etl", timeout=30)
    took = time.monotonic() - started
    print(f"{provider.backend}: Ready {took:.1f}s after the apply (reset was at 4 s)")
    assert took >= 3
