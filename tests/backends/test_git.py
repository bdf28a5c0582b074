"""Git storage against a real git smart-HTTP server (``git http-backend`` behind basic auth,
tests/helpers/git_server.py): the git-hosted conformance suite, then credentials and caching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage import AuthFailed, InvalidConfig, Unavailable, from_serialized
from flowstore.storage.errors import FileNotFound, RefNotFound
from flowstore.storage.git.plain import Git
from tests.backends.git_conformance import GitFactory, GitHostedConformance, SymlinkConformance, flow_script
from tests.helpers.git_server import GitServer
from tests.helpers.gitrepo import LocalGitRepo

USER, PASSWORD = "flows", "canary-git-password-3b1f-do-not-leak"
CREDENTIALS = {"GIT_USERNAME": USER, "GIT_PASSWORD": PASSWORD}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "repos").mkdir()
    with GitServer(tmp_path / "repos", USER, PASSWORD) as running:
        yield running


@pytest.fixture
def repo(server: GitServer) -> LocalGitRepo:
    return LocalGitRepo(server.root)


def config(server: GitServer, repo: LocalGitRepo, **extra: Any) -> dict[str, Any]:
    return {"url": f"{server.url}/{repo.name}.git", **extra}


class TestGitConformance(GitHostedConformance, SymlinkConformance):
    default_label_prefix = "git-flow-storage"
    file_read_requests = None  # a fetch of the commit: what the git client asks, once per commit
    content_requests_per_file = 0  # a directory is read from that fetch
    seed_reaches_server = False  # the seed's Git clones over https (or ssh); this server is http://

    @pytest.fixture
    def storage_factory(self, server: GitServer, repo: LocalGitRepo) -> GitFactory:
        self.server = server

        def make(**kwargs: Any) -> Git:
            return Git(url=f"{server.url}/{repo.name}.git", username=USER, password=PASSWORD, **kwargs)

        return make

    def make_missing_repo_storage(self) -> Git:
        return Git(url=f"{self.server.url}/nope.git", username=USER, password=PASSWORD)

    def requests_seen(self) -> int:
        return len(self.server.log)

    def make_bad_token_storage(self) -> Git:
        return Git(url=f"{self.server.url}/{self.repo.name}.git", username=USER, password="wrong")

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": CREDENTIALS}

    def secret_values(self) -> list[str]:
        return [PASSWORD]


def test_from_config_with_secret_data_and_env_fallback(server: GitServer, repo: LocalGitRepo,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Git.from_config(config(server, repo, path="flows/etl.py", ref="main", labels=["prod"]),
                              credentials=CREDENTIALS)
    assert storage.resolve_ref() == head and storage.labels == ["prod", "git-flow-storage"]
    # An agent has no Secret: the same names from its environment.
    monkeypatch.setenv("GIT_USERNAME", USER)
    monkeypatch.setenv("GIT_PASSWORD", PASSWORD)
    agent = Git.from_config(config(server, repo, path="flows/etl.py"))
    assert agent.get_bytes("flows/etl.py") == flow_script("etl", 1)
    monkeypatch.delenv("GIT_PASSWORD")
    with pytest.raises(AuthFailed) as info:
        Git.from_config(config(server, repo, path="flows/etl.py")).resolve_ref()
    assert "credentials Secret" in info.value.message


def test_errors_never_carry_the_password(server: GitServer, repo: LocalGitRepo) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Git.from_config(config(server, repo, path="flows/etl.py", ref="gone"), credentials=CREDENTIALS)
    with pytest.raises(RefNotFound) as info:
        storage.resolve_ref()
    assert PASSWORD not in info.value.message
    assert PASSWORD not in json.dumps(storage.to_status())


def test_a_pinned_commit_is_fetched_once(server: GitServer, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Git.from_config(config(server, repo, path="flows/etl.py"), credentials=CREDENTIALS)
    storage.pin(head)
    storage.get_bytes("flows/etl.py")
    # The server goes away: the pinned commit is still readable from the cache.
    server.server.shutdown()
    server.server.server_close()
    assert storage.get_bytes("flows/etl.py") == flow_script("etl", 1)
    with pytest.raises(Unavailable):
        storage.resolve_ref("main")


def test_a_directory_is_read_from_the_one_fetch_of_its_commit(server: GitServer, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl/main.py": flow_script("etl", 1), "flows/etl/lib/a.py": b"a = 1\n",
                        "flows/etl/run.sh": b"#!/bin/sh\n"})
    storage = Git.from_config(config(server, repo, path="flows/etl"), credentials=CREDENTIALS)
    assert storage.read_path("flows/etl", head) == {"main.py": flow_script("etl", 1), "lib/a.py": b"a = 1\n",
                                                    "run.sh": b"#!/bin/sh\n"}
    fetch = list(server.log)
    assert fetch and all(line.endswith(("/info/refs", "/git-upload-pack")) for line in fetch)  # a fetch only
    assert storage.read_path("flows/etl/lib", head) == {"a.py": b"a = 1\n"}
    assert storage.read_path("flows/etl/main.py", head) == flow_script("etl", 1)
    assert server.log == fetch  # the rest came from the cache


def test_the_cache_is_per_credentials(server: GitServer, repo: LocalGitRepo) -> None:
    """A commit fetched with one storage's credentials is not readable through another
    storage on the same url with other (or no) credentials."""
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    good = Git.from_config(config(server, repo, path="flows/etl.py"), credentials=CREDENTIALS)
    good.pin(head)
    good.get_bytes("flows/etl.py")
    stranger = Git.from_config(config(server, repo, path="flows/etl.py", ref=head), credentials={})
    with pytest.raises(AuthFailed):
        stranger.get_bytes("flows/etl.py")


def test_force_push_to_a_commit_without_the_file(server: GitServer, repo: LocalGitRepo) -> None:
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    repo.force("main", repo.commit({"other.py": b"x = 1\n"}, branch="unrelated"))  # history rewritten
    storage = Git.from_config(config(server, repo, path="flows/etl.py", ref="main"), credentials=CREDENTIALS)
    with pytest.raises(FileNotFound) as info:
        storage.get_bytes("flows/etl.py")
    assert "flows/etl.py" in info.value.message and not info.value.retryable
    storage.pin(first)  # the last good pin still reads (the server still has the commit)
    assert storage.get_bytes("flows/etl.py") == flow_script("etl", 1)


@pytest.mark.parametrize("url, message", [
    ("ftp://example.com/flows.git", "must be https://"),
    ("https://user:pw@example.com/flows.git", "not in the url"),
])
def test_bad_urls_are_invalid_config(url: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        Git(url=url)


def test_ssh_needs_known_hosts() -> None:
    with pytest.raises(InvalidConfig, match="SSH_KNOWN_HOSTS"):
        Git.from_config({"url": "git@git.example.com:data/flows.git"},
                        credentials={"SSH_PRIVATE_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----\n"})


def test_serialized_status_storage_round_trip(server: GitServer, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 7)})
    storage = Git.from_config(config(server, repo, path="flows/etl.py", ref="main"), credentials=CREDENTIALS)
    storage.add_flow("etl")
    storage.pin(storage.resolve_ref())
    again = from_serialized(storage.to_status(), credentials=CREDENTIALS)
    assert isinstance(again, Git) and again.commit == head and again.ref == "main"
    assert again.get_flow().run() == 7
