"""The Bitbucket storage (Cloud and Server / Data Center) against the Bitbucket contract fakes
(tests/fakes/bitbucket_api.py), which serve real git repositories."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage import AuthFailed, InvalidConfig, StorageError, from_serialized
from flowstore.storage.errors import FileNotFound, RateLimited, RefNotFound, RepositoryNotFound
from flowstore.storage.git.base import GitHosted
from flowstore.storage.git.bitbucket import Bitbucket
from tests.backends.git_conformance import GitFactory, GitHostedConformance, SymlinkConformance, flow_script
from tests.fakes.bitbucket_api import BitbucketCloudAPI, BitbucketServerAPI
from tests.helpers.gitrepo import LocalGitRepo, Symlink

WORKSPACE = "acme"
PROJECT = "DATA"
USER = "flow-bot"
APP_PASSWORD = "app-pw-Zq81xvT3kLmN0p"
CLOUD_TOKEN = "cloud-token-Hh5sR2uY8wQe"
SERVER_TOKEN = "server-token-Nb7Vc3Xz9Lk"
CLOUD_CREDENTIALS = {"BITBUCKET_USERNAME": USER, "BITBUCKET_APP_PASSWORD": APP_PASSWORD}
SERVER_CREDENTIALS = {"BITBUCKET_ACCESS_TOKEN": SERVER_TOKEN}
ALL_SECRETS = [APP_PASSWORD, CLOUD_TOKEN, SERVER_TOKEN]


@pytest.fixture
def repo(tmp_path: Path) -> LocalGitRepo:
    return LocalGitRepo(tmp_path)


# one server per module (stopping one takes the server loop's 0.5 s poll); each test adds its
# own repository (unique name) and starts with an empty log and no rate limit
@pytest.fixture(scope="module")
def cloud_server() -> Iterator[BitbucketCloudAPI]:
    with BitbucketCloudAPI(username=USER, app_password=APP_PASSWORD, access_token=CLOUD_TOKEN) as fake:
        assert isinstance(fake, BitbucketCloudAPI)
        yield fake


@pytest.fixture(scope="module")
def server_server() -> Iterator[BitbucketServerAPI]:
    with BitbucketServerAPI(token=SERVER_TOKEN) as fake:
        assert isinstance(fake, BitbucketServerAPI)
        yield fake


@pytest.fixture
def cloud(cloud_server: BitbucketCloudAPI, repo: LocalGitRepo) -> BitbucketCloudAPI:
    cloud_server.add_repo(WORKSPACE, repo.name, repo)
    cloud_server.rate_limit(0)
    cloud_server.max_page = cloud_server.MAX_PAGE
    cloud_server.log.clear()
    return cloud_server


@pytest.fixture
def server(server_server: BitbucketServerAPI, repo: LocalGitRepo) -> BitbucketServerAPI:
    server_server.add_repo(PROJECT, repo.name, repo)
    server_server.rate_limit(0)
    server_server.max_page = server_server.MAX_PAGE
    server_server.log.clear()
    return server_server


def cloud_storage(fake: BitbucketCloudAPI, repo: str, **kwargs: Any) -> Bitbucket:
    kwargs.setdefault("credentials", CLOUD_CREDENTIALS)
    return Bitbucket(workspace=WORKSPACE, repo=repo, api_url=f"{fake.url}/2.0", **kwargs)


def server_storage(fake: BitbucketServerAPI, repo: str, **kwargs: Any) -> Bitbucket:
    kwargs.setdefault("credentials", SERVER_CREDENTIALS)
    return Bitbucket(PROJECT, repo, host="bitbucket.example.com", api_url=f"{fake.url}/rest/api/1.0", **kwargs)


# ---------------------------------------------------------------------- conformance
class TestBitbucketCloudConformance(GitHostedConformance, SymlinkConformance):
    default_label_prefix = "bitbucket-flow-storage"
    seed_reaches_server = False  # its apiURL (the fake's address) has no seed field

    @pytest.fixture
    def storage_factory(self, cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> GitFactory:
        self.fake = cloud
        return lambda **kwargs: cloud_storage(cloud, repo.name, **kwargs)

    def make_missing_repo_storage(self) -> GitHosted:
        return cloud_storage(self.fake, "no-such-repo")

    def make_bad_token_storage(self) -> GitHosted:
        return cloud_storage(self.fake, self.repo.name,
                             credentials={"BITBUCKET_USERNAME": USER, "BITBUCKET_APP_PASSWORD": "wrong-password"})

    def requests_seen(self) -> int:
        return len(self.fake.log)

    def use_small_pages(self, size: int) -> bool:
        self.fake.max_page = size
        return True

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": CLOUD_CREDENTIALS}

    def secret_values(self) -> list[str]:
        return ALL_SECRETS


class TestBitbucketServerConformance(GitHostedConformance):
    default_label_prefix = "bitbucket-flow-storage"
    seed_reaches_server = False  # its apiURL (the fake's address) has no seed field

    @pytest.fixture
    def storage_factory(self, server: BitbucketServerAPI, repo: LocalGitRepo) -> GitFactory:
        self.fake = server
        return lambda **kwargs: server_storage(server, repo.name, **kwargs)

    def make_missing_repo_storage(self) -> GitHosted:
        return server_storage(self.fake, "no-such-repo")

    def make_bad_token_storage(self) -> GitHosted:
        return server_storage(self.fake, self.repo.name, credentials={"BITBUCKET_ACCESS_TOKEN": "wrong-token"})

    def requests_seen(self) -> int:
        return len(self.fake.log)

    def use_small_pages(self, size: int) -> bool:
        self.fake.max_page = size
        return True

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": SERVER_CREDENTIALS}

    def secret_values(self) -> list[str]:
        return ALL_SECRETS


# ---------------------------------------------------------------------- Cloud specifics
def test_cloud_sends_basic_auth_with_the_app_password(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    assert cloud_storage(cloud, repo.name).resolve_ref("main") == head
    expected = "Basic " + base64.b64encode(f"{USER}:{APP_PASSWORD}".encode()).decode()
    assert cloud.log and all(r.headers.get("authorization") == expected for r in cloud.log)
    assert cloud.log[-1].path == f"/2.0/repositories/{WORKSPACE}/{repo.name}/commit/main"


def test_cloud_access_token_is_sent_as_bearer(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = cloud_storage(cloud, repo.name, credentials={"BITBUCKET_ACCESS_TOKEN": CLOUD_TOKEN})
    assert storage.resolve_ref() == head  # default branch: the repository, then its main branch
    assert [r.path for r in cloud.log] == [f"/2.0/repositories/{WORKSPACE}/{repo.name}",
                                           f"/2.0/repositories/{WORKSPACE}/{repo.name}/commit/main"]
    assert all(r.headers.get("authorization") == f"Bearer {CLOUD_TOKEN}" for r in cloud.log)


def test_cloud_seed_project_is_the_workspace(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Bitbucket(WORKSPACE, repo.name, path="flows/etl.py", api_url=f"{cloud.url}/2.0",
                        credentials=CLOUD_CREDENTIALS)
    assert storage.workspace == WORKSPACE and storage.repo_name() == f"{WORKSPACE}/{repo.name}"
    assert storage.resolve_ref() == head
    assert storage.web_url("flows/my flow.py", head) == (
        f"https://bitbucket.org/{WORKSPACE}/{repo.name}/src/{head}/flows/my%20flow.py")


def test_cloud_env_credentials_when_none_are_given(cloud: BitbucketCloudAPI, repo: LocalGitRepo,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    monkeypatch.delenv("BITBUCKET_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("BITBUCKET_USERNAME", USER)
    monkeypatch.setenv("BITBUCKET_APP_PASSWORD", APP_PASSWORD)
    storage = cloud_storage(cloud, repo.name, credentials=None)
    assert storage.resolve_ref("main") == head
    assert cloud.log[-1].headers["authorization"].startswith("Basic ")
    monkeypatch.setenv("BITBUCKET_ACCESS_TOKEN", CLOUD_TOKEN)  # a token wins over an app password
    assert cloud_storage(cloud, repo.name, credentials=None).resolve_ref("main") == head
    assert cloud.log[-1].headers["authorization"] == f"Bearer {CLOUD_TOKEN}"
    assert CLOUD_TOKEN not in repr(storage) and APP_PASSWORD not in json.dumps(storage.to_status())


def test_cloud_anonymous_without_any_credentials(cloud: BitbucketCloudAPI, repo: LocalGitRepo,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    for name in ("BITBUCKET_USERNAME", "BITBUCKET_APP_PASSWORD", "BITBUCKET_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthFailed):  # the fake's repositories are private
        cloud_storage(cloud, repo.name, credentials=None).resolve_ref("main")
    assert "authorization" not in cloud.log[-1].headers


def test_empty_credentials_are_anonymous_and_ignore_the_environment(
        cloud: BitbucketCloudAPI, server: BitbucketServerAPI, repo: LocalGitRepo,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller passes {} for a storage without a Secret: never the operator's own token."""
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    monkeypatch.setenv("BITBUCKET_ACCESS_TOKEN", SERVER_TOKEN)
    with pytest.raises(AuthFailed):
        server_storage(server, repo.name, credentials={}).resolve_ref("main")
    assert "authorization" not in server.log[-1].headers
    with pytest.raises(AuthFailed):
        cloud_storage(cloud, repo.name, credentials={}).resolve_ref("main")
    assert "authorization" not in cloud.log[-1].headers
    with pytest.raises(InvalidConfig, match="none of the keys"):
        cloud_storage(cloud, repo.name, credentials={"token": "x"})


def test_cloud_rate_limit_is_rate_limited_with_retry_after(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = cloud_storage(cloud, repo.name, path="flows/etl.py", ref="main")
    cloud.rate_limit(1, retry_after=42)
    with pytest.raises(RateLimited) as info:
        storage.resolve_ref()
    assert info.value.retry_after == 42.0 and info.value.retryable
    assert repo.name in info.value.message
    assert storage.resolve_ref() == head  # the limit lifted: the next call goes through
    cloud.rate_limit(1, retry_after=7)
    with pytest.raises(RateLimited) as info:
        storage.read_file("flows/etl.py", head)
    assert info.value.retry_after == 7.0


def test_cloud_directory_is_not_a_file(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    with pytest.raises(FileNotFound, match="is a directory"):
        cloud_storage(cloud, repo.name).read_file("flows", head)


def test_cloud_directory_is_walked_page_by_page(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    files = {**{f"flows/etl/f{i}.py": f"x = {i}\n".encode() for i in range(3)}, "flows/etl/lib/a.py": b"a = 1\n"}
    head = repo.commit(files)
    cloud.max_page = 2
    got = cloud_storage(cloud, repo.name).read_path("flows/etl", head)
    assert got == {p.removeprefix("flows/etl/"): d for p, d in files.items()}
    base = f"/2.0/repositories/{WORKSPACE}/{repo.name}/src/{head}"
    listings = [(r.path, r.query) for r in cloud.log if r.path.endswith("/")]
    assert [(r.path, r.query) for r in cloud.log[:1]] == [(f"{base}/flows/etl", {})]  # what read_file asks
    assert listings == [(f"{base}/flows/etl/", {"pagelen": ["2"], "page": ["2"]}),  # the `next` page's query
                        (f"{base}/flows/etl/lib/", {"pagelen": ["100"]})]
    reads = sorted(r.path for r in cloud.log[1:] if not r.path.endswith("/"))
    assert reads == sorted(f"{base}/{p}" for p in files)


def test_cloud_branch_with_a_slash(cloud: BitbucketCloudAPI, repo: LocalGitRepo) -> None:
    feature = repo.commit({"flows/etl.py": flow_script("etl", 3)}, branch="feature/x")
    assert cloud_storage(cloud, repo.name).resolve_ref("feature/x") == feature


# ---------------------------------------------------------------------- Server specifics
def test_server_sends_the_bearer_token(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = server_storage(server, repo.name, path="flows/etl.py")
    assert storage.resolve_ref() == head
    assert storage.get_bytes("flows/etl.py") == flow_script("etl", 1)
    assert all(r.headers.get("authorization") == f"Bearer {SERVER_TOKEN}" for r in server.log)
    base = f"/rest/api/1.0/projects/{PROJECT}/repos/{repo.name}"
    assert [r.path for r in server.log] == [f"{base}/branches/default", f"{base}/branches/default",
                                            f"{base}/raw/flows/etl.py"]
    assert server.log[-1].arg("at") == head


def test_server_directory_is_browsed_page_by_page(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    files = {**{f"flows/etl/f{i}.py": f"x = {i}\n".encode() for i in range(3)}, "flows/etl/lib/a.py": b"a = 1\n"}
    head = repo.commit(files)
    server.max_page = 2
    got = server_storage(server, repo.name).read_path("flows/etl", head)
    assert got == {p.removeprefix("flows/etl/"): d for p, d in files.items()}
    base = f"/rest/api/1.0/projects/{PROJECT}/repos/{repo.name}"
    assert (server.log[0].path, server.log[0].query) == (f"{base}/raw/flows/etl", {"at": [head]})  # a 404
    browses = [(r.path, r.query) for r in server.log if "/browse/" in r.path]
    assert browses == [
        (f"{base}/browse/flows/etl", {"at": [head], "start": ["0"], "limit": ["1000"]}),
        (f"{base}/browse/flows/etl", {"at": [head], "start": ["2"], "limit": ["1000"]}),
        (f"{base}/browse/flows/etl/lib", {"at": [head], "start": ["0"], "limit": ["1000"]}),
    ]
    reads = sorted(r.path for r in server.log[1:] if "/raw/" in r.path)
    assert reads == sorted(f"{base}/raw/{p}" for p in files)


def test_server_symlinks_are_read_as_files_holding_their_target(server: BitbucketServerAPI,
                                                                repo: LocalGitRepo) -> None:
    """Data Center's browse API has no type for symlinks (FILE, DIRECTORY, SUBMODULE): a link
    comes back as what git stores for it, its target path, never as the file it names."""
    head = repo.commit({"flows/etl/main.py": flow_script("etl", 1), "flows/etl/current.py": Symlink("main.py"),
                        "flows/etl/data": Symlink("../../secrets"), "secrets": b"password\n"})
    got = server_storage(server, repo.name).read_path("flows/etl", head)
    assert got == {"main.py": flow_script("etl", 1), "current.py": b"main.py", "data": b"../../secrets"}


def test_server_env_token_when_no_credentials_are_given(server: BitbucketServerAPI, repo: LocalGitRepo,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    monkeypatch.setenv("BITBUCKET_ACCESS_TOKEN", SERVER_TOKEN)
    assert server_storage(server, repo.name, credentials=None).resolve_ref("main") == head
    assert server.log[-1].headers["authorization"] == f"Bearer {SERVER_TOKEN}"


def test_server_rate_limit_is_rate_limited_with_retry_after(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = server_storage(server, repo.name)
    server.rate_limit(2, retry_after=13)
    for _ in range(2):
        with pytest.raises(RateLimited) as info:
            storage.resolve_ref("main")
        assert info.value.retry_after == 13.0
    assert storage.resolve_ref("main") == head


def test_server_branch_with_a_slash_and_fully_qualified_refs(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    main = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    feature = repo.commit({"flows/etl.py": flow_script("etl", 2)}, branch="release/1.0")
    storage = server_storage(server, repo.name)
    assert storage.resolve_ref("release/1.0") == feature
    assert server.log[-1].path.endswith("/commits") and server.log[-1].arg("until") == "release/1.0"
    assert storage.resolve_ref("refs/heads/main") == main
    with pytest.raises(RefNotFound, match=r"release/2\.0"):
        storage.resolve_ref("release/2.0")


def test_server_missing_project_is_repository_not_found(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    storage = Bitbucket("NOPE", repo.name, host="bitbucket.example.com", api_url=f"{server.url}/rest/api/1.0",
                        credentials=SERVER_CREDENTIALS)
    with pytest.raises(RepositoryNotFound, match=f"NOPE/repos/{repo.name}"):
        storage.resolve_ref()


def test_server_urls_and_serialization(server: BitbucketServerAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Bitbucket.from_config({"project": PROJECT, "repo": repo.name, "host": "bitbucket.example.com",
                                     "apiURL": f"{server.url}/rest/api/1.0", "path": "flows/etl.py",
                                     "ref": "main", "labels": ["prod"]}, credentials=SERVER_CREDENTIALS)
    assert isinstance(storage, Bitbucket)
    assert storage.web_url("flows/etl.py", head) == (
        f"https://bitbucket.example.com/projects/{PROJECT}/repos/{repo.name}/browse/flows/etl.py?at={head}")
    doc = storage.to_status()
    assert doc["type"] == "Bitbucket" and doc["project"] == PROJECT and doc["host"] == "bitbucket.example.com"
    assert doc["repo"] == repo.name and doc["ref"] == "main" and doc["path"] == "flows/etl.py"
    assert doc["apiURL"] == f"{server.url}/rest/api/1.0"
    assert set(doc["labels"]) == {"prod", "bitbucket-flow-storage"}
    again = from_serialized(doc, credentials=SERVER_CREDENTIALS)
    assert again.get_bytes("flows/etl.py") == flow_script("etl", 1)
    assert SERVER_TOKEN not in json.dumps(doc)


# ---------------------------------------------------------------------- both
def test_credentials_never_in_messages(cloud: BitbucketCloudAPI, server: BitbucketServerAPI,
                                       repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    errors: list[StorageError] = []
    bad_cloud = cloud_storage(cloud, repo.name, credentials={"BITBUCKET_ACCESS_TOKEN": "bad-cloud-token-1234"})
    bad_server = server_storage(server, repo.name, credentials={"BITBUCKET_ACCESS_TOKEN": "bad-server-token-1234"})
    for call in (lambda: bad_cloud.resolve_ref("main"), lambda: bad_server.resolve_ref("main"),
                 lambda: cloud_storage(cloud, repo.name).read_file("missing.py", head),
                 lambda: server_storage(server, "nope").resolve_ref(),
                 lambda: cloud_storage(cloud, repo.name).resolve_ref("nope")):
        with pytest.raises(StorageError) as info:
            call()
        errors.append(info.value)
    assert isinstance(errors[0], AuthFailed) and isinstance(errors[1], AuthFailed)
    for error in errors:
        text = f"{error.message} {error!r} {error.__cause__!r}"
        for secret in [*ALL_SECRETS, "bad-cloud-token-1234", "bad-server-token-1234"]:
            assert secret not in text
    for storage in (bad_cloud, bad_server):
        assert "bad-" not in repr(storage) and "bad-" not in json.dumps(storage.to_status())


def test_configuration_errors_name_what_to_fix() -> None:
    with pytest.raises(InvalidConfig, match="repo"):
        Bitbucket(WORKSPACE, None)
    with pytest.raises(InvalidConfig, match="workspace"):
        Bitbucket(repo="flows", credentials=CLOUD_CREDENTIALS)
    with pytest.raises(InvalidConfig, match="project"):
        Bitbucket(repo="flows", host="bitbucket.example.com", credentials=SERVER_CREDENTIALS)
    with pytest.raises(InvalidConfig, match="BITBUCKET_APP_PASSWORD"):
        Bitbucket(WORKSPACE, "flows", credentials={"BITBUCKET_USERNAME": USER})
    with pytest.raises(InvalidConfig, match="BITBUCKET_ACCESS_TOKEN"):
        Bitbucket(PROJECT, "flows", host="bitbucket.example.com", credentials=CLOUD_CREDENTIALS)
    with pytest.raises(InvalidConfig) as info:
        Bitbucket(WORKSPACE, "flows", credentials={"BITBUCKET_USERNAME": "x", "BITBUCKET_APP_PASSWORD": ""})
    assert "x" not in info.value.message.replace("BITBUCKET", "").lower().split()


def test_cloud_defaults() -> None:
    storage = Bitbucket(workspace=WORKSPACE, repo="flows", credentials=CLOUD_CREDENTIALS)
    assert storage.api_url == "https://api.bitbucket.org/2.0"
    assert storage.to_status()["workspace"] == WORKSPACE and "apiURL" not in storage.to_status()
    server = Bitbucket(PROJECT, "flows", host="https://git.example.com/bitbucket/", credentials=SERVER_CREDENTIALS)
    assert server.api_url == "https://git.example.com/bitbucket/rest/api/1.0"
