"""GitLab storage against the GitLab REST v4 contract fake (tests/fakes/gitlab_api.py): the
shared git-hosted conformance suite, then rate limits, auth, token hygiene, project ids and
configuration."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore.storage import AuthFailed, InvalidConfig, StorageError, from_serialized
from flowstore.storage.errors import FileNotFound, RateLimited, RefNotFound, RepositoryNotFound
from flowstore.storage.git import base as git_base
from flowstore.storage.git.base import raise_for_http
from flowstore.storage.git.gitlab import GitLab
from tests.backends.git_conformance import GitFactory, GitHostedConformance, SymlinkConformance, flow_script
from tests.fakes.gitlab_api import GitLabAPI
from tests.helpers.gitrepo import LocalGitRepo, Submodule, Symlink

TOKEN = "glpat-canaryGitLabToken7f3a9c1eDoNotLeak"
PROJECT = "acme/data/flows"  # a subgroup: two slashes to encode


@pytest.fixture
def repo(tmp_path: Path) -> LocalGitRepo:
    return LocalGitRepo(tmp_path)


@pytest.fixture
def api(repo: LocalGitRepo) -> Iterator[GitLabAPI]:
    with GitLabAPI(token=TOKEN) as fake:
        assert isinstance(fake, GitLabAPI)
        fake.add_project(PROJECT, repo, private=True, project_id=42)
        yield fake


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITLAB_ACCESS_TOKEN", raising=False)


def storage(api: GitLabAPI, token: str | None = TOKEN, **kwargs: Any) -> GitLab:
    kwargs.setdefault("repo", PROJECT)
    return GitLab(api_url=api.api_url, access_token=token, **kwargs)


def assert_no_token(*things: Any) -> None:
    for thing in things:
        assert TOKEN not in (thing if isinstance(thing, str) else json.dumps(thing, default=str))


class TestGitLabConformance(GitHostedConformance, SymlinkConformance):
    default_label_prefix = "gitlab"
    seed_reaches_server = False  # its apiURL (the fake's address) has no seed field

    @pytest.fixture
    def storage_factory(self, api: GitLabAPI) -> GitFactory:
        self.api = api

        def factory(**kwargs: Any) -> GitLab:
            return storage(api, **kwargs)

        return factory

    def make_missing_repo_storage(self) -> GitLab:
        return storage(self.api, repo="acme/no-such-project", path="flows/etl.py")

    def make_bad_token_storage(self) -> GitLab:
        return storage(self.api, token="glpat-wrong", path="flows/etl.py")

    def requests_seen(self) -> int:
        return len(self.api.log)

    def use_small_pages(self, size: int) -> bool:
        self.api.max_per_page = size
        return True

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": {"GITLAB_ACCESS_TOKEN": TOKEN}}

    def secret_values(self) -> list[str]:
        return [TOKEN]


# ---------------------------------------------------------------------- rate limits
def test_throttled_request_is_rate_limited_until_the_reset(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    reset_at = api.rate_limit(1, reset_in_seconds=45)
    with pytest.raises(RateLimited) as info:
        storage(api).read_file("flows/etl.py", head)
    error = info.value
    assert error.retryable and error.reason == "RateLimited"
    assert error.retry_after == 45  # Retry-After, which agrees with RateLimit-Reset
    assert abs(error.retry_after - (reset_at - time.time())) < 3
    assert PROJECT in error.message and "flows/etl.py" in error.message
    assert storage(api).read_file("flows/etl.py", head) == flow_script("etl", 1)  # over: reads work again


def test_rate_limit_reset_alone_gives_the_delay() -> None:
    """Older GitLab versions send RateLimit-Reset without Retry-After on 429."""
    reset_at = int(time.time()) + 300
    with pytest.raises(RateLimited) as info:
        raise_for_http(429, {"RateLimit-Reset": str(reset_at)}, "Retry later", what="x")
    assert info.value.retry_after is not None and 297 <= info.value.retry_after <= 300


def test_forbidden_is_auth_failed_not_rate_limited(api: GitLabAPI, repo: LocalGitRepo) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    api.deny(PROJECT)
    with pytest.raises(AuthFailed) as info:
        storage(api, ref="main").resolve_ref()
    assert not isinstance(info.value, RateLimited) and not info.value.retryable
    assert "403 Forbidden" in info.value.message


# ---------------------------------------------------------------------- auth and token hygiene
def test_private_token_header_and_encoded_paths(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = storage(api, ref="main")
    assert store.resolve_ref() == head
    assert store.read_file("flows/etl.py", head) == flow_script("etl", 1)
    commits, raw = api.log[-2], api.log[-1]
    for request in (commits, raw):
        assert request.headers["private-token"] == TOKEN
        assert "authorization" not in request.headers
    assert commits.raw_path == "/api/v4/projects/acme%2Fdata%2Fflows/repository/commits/main"
    assert raw.raw_path == "/api/v4/projects/acme%2Fdata%2Fflows/repository/files/flows%2Fetl.py/raw"
    assert raw.query == {"ref": [head]}


def test_numeric_project_id(api: GitLabAPI, repo: LocalGitRepo) -> None:
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    head = repo.commit({"flows/etl.py": flow_script("etl", 2)})
    store = GitLab.from_config(
        {"repo": 42, "path": "flows/etl.py", "apiURL": api.api_url}, credentials={"GITLAB_ACCESS_TOKEN": TOKEN}
    )
    assert store.resolve_ref() == head  # default branch from GET /projects/42
    assert api.log[-2].raw_path == "/api/v4/projects/42"
    assert store.read_file("flows/etl.py", first) == flow_script("etl", 1)
    assert api.log[-1].raw_path == "/api/v4/projects/42/repository/files/flows%2Fetl.py/raw"
    # the web URL names the project by path, learnt from the API
    assert store.web_url("flows/etl.py", first).endswith(f"/{PROJECT}/-/blob/{first}/flows/etl.py")
    assert store.to_status()["repo"] == "42"
    with pytest.raises(RepositoryNotFound):
        storage(api, repo="4242").resolve_ref("main")


def test_token_never_in_serialize_repr_or_errors(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = GitLab.from_config(
        {"repo": PROJECT, "path": "flows/etl.py", "ref": "main", "apiURL": api.api_url},
        credentials={"GITLAB_ACCESS_TOKEN": f" {TOKEN}\n"},
    )
    store.pin(store.resolve_ref())
    assert_no_token(store.to_status(), repr(store), store.url_for("flows/etl.py"))
    messages: list[str] = []
    for action in (
        lambda: store.read_file("flows/missing.py", head),
        lambda: store.resolve_ref("no-such-branch"),
        lambda: (api.rate_limit(1, 60), store.resolve_ref()),
    ):
        with pytest.raises(StorageError) as info:
            action()
        messages.append(info.value.message)
    bad = GitLab.from_config(
        {"repo": PROJECT, "apiURL": api.api_url}, credentials={"GITLAB_ACCESS_TOKEN": "glpat-wrong"}
    )
    with pytest.raises(AuthFailed) as auth:
        bad.resolve_ref("main")
    assert "401 Unauthorized" in auth.value.message
    assert "key GITLAB_ACCESS_TOKEN of the referenced Secret" in auth.value.message
    assert_no_token(*messages, auth.value.message, str(auth.value))
    assert "glpat-wrong" not in auth.value.message


def test_secret_without_the_token_key_is_invalid_config(api: GitLabAPI) -> None:
    with pytest.raises(InvalidConfig, match="GITLAB_ACCESS_TOKEN") as info:
        GitLab.from_config({"repo": PROJECT, "apiURL": api.api_url}, credentials={"password": TOKEN})
    assert "keys present: password" in info.value.message
    assert_no_token(info.value.message)


def test_environment_token_when_no_credentials(
    api: GitLabAPI, repo: LocalGitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    config = {"repo": PROJECT, "path": "flows/etl.py", "apiURL": api.api_url}
    with pytest.raises(RepositoryNotFound, match="needs a token"):  # private and anonymous: invisible
        GitLab.from_config(config).resolve_ref()
    assert "private-token" not in api.log[-1].headers
    monkeypatch.setenv("GITLAB_ACCESS_TOKEN", TOKEN)
    store = GitLab.from_config(config, credentials=None)
    assert store.resolve_ref() == head
    assert api.log[-1].headers["private-token"] == TOKEN


def test_public_project_reads_anonymously(api: GitLabAPI, tmp_path: Path) -> None:
    public = LocalGitRepo(tmp_path, name="public")
    head = public.commit({"flows/etl.py": flow_script("etl", 7)})
    api.add_project("acme/public-flows", public, private=False)
    store = storage(api, token=None, repo="acme/public-flows", path="flows/etl.py")
    assert store.resolve_ref() == head
    assert store.get_bytes("flows/etl.py") == flow_script("etl", 7)
    assert all("private-token" not in r.headers for r in api.log)


# ---------------------------------------------------------------------- refs and paths
def test_branch_names_with_slashes(api: GitLabAPI, repo: LocalGitRepo) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    feature = repo.commit({"flows/etl.py": flow_script("etl", 2)}, branch="feature/new-etl")
    assert storage(api, ref="feature/new-etl").resolve_ref() == feature
    assert api.log[-1].raw_path.endswith("/repository/commits/feature%2Fnew-etl")


def test_empty_project_is_ref_not_found(api: GitLabAPI) -> None:
    with pytest.raises(RefNotFound, match="empty"):
        storage(api).resolve_ref()


def test_file_read_from_a_vanished_project_is_repository_not_found(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = storage(api, repo="acme/gone")
    with pytest.raises(RepositoryNotFound):
        store.read_file("flows/etl.py", head)
    with pytest.raises(FileNotFound):
        storage(api).read_file("flows", head)  # a directory is no file


def test_a_directory_is_read_from_the_tree_listing_page_by_page(
    api: GitLabAPI, repo: LocalGitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"flows/etl/f{i}.py": f"x = {i}\n".encode() for i in range(5)}
    head = repo.commit(files)
    api.max_per_page = 2
    assert storage(api).read_path("flows/etl", head) == {p.removeprefix("flows/etl/"): d for p, d in files.items()}
    raw, *rest = api.log
    assert raw.raw_path.endswith("/repository/files/flows%2Fetl/raw")
    pages = [r for r in rest if r.raw_path.endswith("/repository/tree")]
    assert [r.query for r in pages] == [
        {"path": ["flows/etl"], "ref": [head], "recursive": ["true"], "per_page": ["100"], "page": [str(n)]}
        for n in (1, 2, 3)
    ]
    blobs = [r for r in rest if "/repository/blobs/" in r.raw_path]
    assert len(blobs) == 5 and all(r.raw_path.endswith("/raw") for r in blobs)
    assert all(r.headers["private-token"] == TOKEN for r in api.log)
    # a directory over the bound stops the listing at the page that passes it
    api.log.clear()
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 3)
    with pytest.raises(InvalidConfig, match="more than 3 files"):
        storage(api).read_path("flows/etl", head)
    assert [r.query.get("page") for r in api.log if r.raw_path.endswith("/tree")] == [["1"], ["2"]]
    assert not any("/blobs/" in r.raw_path for r in api.log)


def test_a_rate_limit_while_listing_a_directory_is_rate_limited(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({f"flows/etl/f{i}.py": f"x = {i}\n".encode() for i in range(3)})
    api.max_per_page = 1
    pages = storage(api)._tree_entries("flows/etl", head)
    first = next(pages)  # the first page, before the limit
    api.rate_limit(1, reset_in_seconds=30)
    with pytest.raises(RateLimited) as info:
        next(pages)
    assert first.path == "f0.py" and info.value.retry_after == 30


# ---------------------------------------------------------------------- configuration
def test_host_gives_api_v4_and_web_urls() -> None:
    store = GitLab(PROJECT, host="gitlab.example.com")
    assert store.api_base == "https://gitlab.example.com/api/v4"
    assert store.web_url("flows/my flow.py", "b" * 40) == (
        f"https://gitlab.example.com/{PROJECT}/-/blob/{'b' * 40}/flows/my%20flow.py"
    )
    assert GitLab(PROJECT).api_base == "https://gitlab.com/api/v4"
    assert GitLab(PROJECT, host="http://gitlab.internal:8080/").api_base == "http://gitlab.internal:8080/api/v4"
    assert GitLab(PROJECT, host="gitlab.example.com", api_url="http://proxy/api/v4/").api_base == "http://proxy/api/v4"


def test_config_keys_round_trip(api: GitLabAPI) -> None:
    config = {
        "repo": PROJECT,
        "host": "gitlab.example.com",
        "path": "flows/etl.py",
        "ref": "release",
        "apiURL": api.api_url,
        "addDefaultLabels": True,
    }
    store = GitLab.from_config(config, credentials={"GITLAB_ACCESS_TOKEN": TOKEN})
    doc = store.to_status()
    assert doc["type"] == "GitLab"
    assert {k: doc[k] for k in ("repo", "host", "path", "ref", "apiURL")} == {
        "repo": PROJECT,
        "host": "gitlab.example.com",
        "path": "flows/etl.py",
        "ref": "release",
        "apiURL": api.api_url,
    }
    assert doc["labels"] == ["gitlab-flow-storage"]
    again = from_serialized(doc, credentials={"GITLAB_ACCESS_TOKEN": TOKEN})
    assert isinstance(again, GitLab) and again.to_status() == doc


@pytest.mark.parametrize("bad", ["flows", "acme//flows", "https://gitlab.com/acme/flows", "acme/fl ows", ""])
def test_repo_must_be_a_project_path_or_id(bad: str) -> None:
    with pytest.raises(InvalidConfig, match="namespace/project"):
        GitLab.from_config({"repo": bad})


# ---------------------------------------------------------------------- the fake stays honest
def test_fake_routes_only_encoded_slashes_and_checks_the_token(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    auth = {"PRIVATE-TOKEN": TOKEN}
    base = api.api_url
    good = requests.get(
        f"{base}/projects/acme%2Fdata%2Fflows/repository/files/flows%2Fetl.py/raw",
        params={"ref": head},
        headers=auth,
        timeout=5,
    )
    assert good.status_code == 200 and good.content == flow_script("etl", 1)
    assert good.headers["RateLimit-Limit"] == "2000"
    unencoded_file = requests.get(
        f"{base}/projects/acme%2Fdata%2Fflows/repository/files/flows/etl.py/raw",
        params={"ref": head},
        headers=auth,
        timeout=5,
    )
    assert unencoded_file.status_code == 404 and unencoded_file.json() == {"error": "404 Not Found"}
    unencoded_project = requests.get(f"{base}/projects/acme/data/flows", headers=auth, timeout=5)
    assert unencoded_project.status_code == 404 and unencoded_project.json() == {"error": "404 Not Found"}
    wrong = requests.get(f"{base}/projects/42", headers={"PRIVATE-TOKEN": "nope"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json() == {"message": "401 Unauthorized"}
    anonymous = requests.get(f"{base}/projects/42", timeout=5)
    assert anonymous.status_code == 404 and anonymous.json() == {"message": "404 Project Not Found"}
    missing = requests.get(f"{base}/projects/42/repository/commits/nope", headers=auth, timeout=5)
    assert missing.status_code == 404 and missing.json() == {"message": "404 Commit Not Found"}


def test_fake_tree_listing_paginates_as_documented(api: GitLabAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/a.py": b"a\n", "flows/lib/b.py": b"b\n", "flows/link": Symlink("a.py"),
                        "flows/vendor": Submodule("2" * 40)})
    auth = {"PRIVATE-TOKEN": TOKEN}
    tree = f"{api.api_url}/projects/42/repository/tree"
    first = requests.get(tree, params={"path": "flows", "ref": head, "recursive": "true"}, headers=auth, timeout=5)
    assert first.headers["X-Per-Page"] == "20" and first.headers["X-Next-Page"] == ""  # default per_page
    assert {e["path"]: (e["type"], e["mode"]) for e in first.json()} == {
        "flows/a.py": ("blob", "100644"), "flows/lib": ("tree", "040000"), "flows/lib/b.py": ("blob", "100644"),
        "flows/link": ("blob", "120000"), "flows/vendor": ("commit", "160000")}
    capped = requests.get(tree, params={"path": "flows", "ref": head, "per_page": "1000"}, headers=auth, timeout=5)
    assert capped.headers["X-Per-Page"] == "100"
    api.max_per_page = 2
    paged = requests.get(tree, params={"path": "flows", "ref": head, "recursive": "true", "page": "3"}, headers=auth,
                         timeout=5)
    assert len(paged.json()) == 1 and paged.headers["X-Next-Page"] == "" and paged.headers["X-Prev-Page"] == "2"
    assert paged.headers["X-Total"] == "5" and 'rel="prev"' in paged.headers["Link"]
    gone = requests.get(tree, params={"path": "nowhere", "ref": head}, headers=auth, timeout=5)
    assert gone.status_code == 404 and gone.json() == {"message": "404 Tree Not Found"}
    blob = requests.get(f"{api.api_url}/projects/42/repository/blobs/{'0' * 40}/raw", headers=auth, timeout=5)
    assert blob.status_code == 404 and blob.json() == {"message": "404 Blob Not Found"}
