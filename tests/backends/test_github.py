"""GitHub storage against the GitHub REST contract fake (tests/fakes/github_api.py): the shared
git-hosted conformance suite, then rate limits, auth, token hygiene and configuration."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowstore.storage import AuthFailed, InvalidConfig, StorageError, Unavailable, from_serialized
from flowstore.storage.errors import FileNotFound, RateLimited, RefNotFound, RepositoryNotFound
from flowstore.storage.git.github import GitHub
from tests.backends.git_conformance import GitFactory, GitHostedConformance, SymlinkConformance, flow_script
from tests.fakes.github_api import GitHubAPI
from tests.helpers.gitrepo import LocalGitRepo, Submodule, Symlink
from tests.helpers.net import free_port

TOKEN = "ghp_canaryGitHubToken7f3a9c1eDoNotLeak0001"
REPO = "acme/flows"


@pytest.fixture
def repo(tmp_path: Path) -> LocalGitRepo:
    return LocalGitRepo(tmp_path)


@pytest.fixture
def api(repo: LocalGitRepo) -> Iterator[GitHubAPI]:
    with GitHubAPI(token=TOKEN) as fake:
        assert isinstance(fake, GitHubAPI)
        fake.add_repo(REPO, repo, private=True)
        yield fake


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_ACCESS_TOKEN", raising=False)


def storage(api: GitHubAPI, token: str | None = TOKEN, **kwargs: Any) -> GitHub:
    kwargs.setdefault("repo", REPO)
    return GitHub(api_url=api.url, access_token=token, **kwargs)


def assert_no_token(*things: Any) -> None:
    for thing in things:
        assert TOKEN not in (thing if isinstance(thing, str) else json.dumps(thing, default=str))


class TestGitHubConformance(GitHostedConformance, SymlinkConformance):
    default_label_prefix = "github"

    @pytest.fixture
    def storage_factory(self, api: GitHubAPI) -> GitFactory:
        self.api = api

        def factory(**kwargs: Any) -> GitHub:
            return storage(api, **kwargs)

        return factory

    def make_missing_repo_storage(self) -> GitHub:
        return storage(self.api, repo="acme/no-such-repo", path="flows/etl.py")

    def make_bad_token_storage(self) -> GitHub:
        return storage(self.api, token="ghp_wrong", path="flows/etl.py")

    def requests_seen(self) -> int:
        return len(self.api.log)

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": {"GITHUB_ACCESS_TOKEN": TOKEN}}

    def secret_values(self) -> list[str]:
        return [TOKEN]


# ---------------------------------------------------------------------- rate limits
@pytest.mark.parametrize("status", [403, 429])
def test_primary_rate_limit_is_rate_limited_until_the_reset(api: GitHubAPI, repo: LocalGitRepo, status: int) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    reset_at = api.rate_limit(1, reset_in_seconds=900, status=status)
    with pytest.raises(RateLimited) as info:
        storage(api, ref="main").resolve_ref()
    error = info.value
    assert error.retryable and error.reason == "RateLimited"
    assert error.retry_after is not None and abs(error.retry_after - (reset_at - time.time())) < 3
    assert 890 <= error.retry_after <= 900
    assert REPO in error.message
    assert storage(api, ref="main").resolve_ref() == repo.head()  # the limit is over: reads work again


def test_secondary_rate_limit_uses_retry_after(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    api.secondary_rate_limit(1, retry_after=42)
    with pytest.raises(RateLimited) as info:
        storage(api).read_file("flows/etl.py", head)
    assert info.value.retry_after == 42
    assert "flows/etl.py" in info.value.message


def test_forbidden_is_auth_failed_not_rate_limited(api: GitHubAPI, repo: LocalGitRepo) -> None:
    """403 without rate-limit headers at 0 is a permission problem, not throttling."""
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    api.deny(REPO)
    with pytest.raises(AuthFailed) as info:
        storage(api, ref="main").resolve_ref()
    assert not isinstance(info.value, RateLimited) and not info.value.retryable
    assert "Resource not accessible" in info.value.message
    assert "key GITHUB_ACCESS_TOKEN" not in info.value.message  # constructed directly: no Secret
    response = requests.get(f"{api.url}/repos/{REPO}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert response.status_code == 403 and response.headers["x-ratelimit-remaining"] != "0"


# ---------------------------------------------------------------------- auth and token hygiene
def test_the_token_is_sent_as_a_bearer_header_with_the_api_headers(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = storage(api, ref="main")
    assert store.resolve_ref() == head
    assert store.read_file("flows/etl.py", head) == flow_script("etl", 1)
    commits, contents = api.log[-2], api.log[-1]
    for request in (commits, contents):
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["x-github-api-version"] == "2022-11-28"
    assert commits.raw_path == f"/repos/{REPO}/commits/main"
    assert commits.headers["accept"] == "application/vnd.github.sha"
    assert contents.raw_path == f"/repos/{REPO}/contents/flows/etl.py"
    assert contents.query == {"ref": [head]}
    assert contents.headers["accept"] == "application/vnd.github.raw+json"


def test_token_never_in_serialize_repr_or_errors(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = GitHub.from_config(
        {"repo": REPO, "path": "flows/etl.py", "ref": "main", "apiURL": api.url},
        credentials={"GITHUB_ACCESS_TOKEN": TOKEN + "\n"},
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
    bad = GitHub.from_config({"repo": REPO, "apiURL": api.url}, credentials={"GITHUB_ACCESS_TOKEN": "ghp_wrong"})
    with pytest.raises(AuthFailed) as auth:
        bad.resolve_ref("main")
    assert "Bad credentials" in auth.value.message and "key GITHUB_ACCESS_TOKEN of the referenced Secret" in (
        auth.value.message
    )
    assert_no_token(*messages, auth.value.message, str(auth.value))
    assert "ghp_wrong" not in auth.value.message


def test_secret_without_the_token_key_is_invalid_config(api: GitHubAPI) -> None:
    with pytest.raises(InvalidConfig, match="GITHUB_ACCESS_TOKEN") as info:
        GitHub.from_config({"repo": REPO, "apiURL": api.url}, credentials={"token": TOKEN})
    assert "keys present: token" in info.value.message
    assert_no_token(info.value.message)


def test_token_with_line_breaks_inside_is_invalid_config() -> None:
    with pytest.raises(InvalidConfig, match="not a valid GitHub token") as info:
        GitHub(REPO, access_token="ghp_abc\ndef")
    assert "ghp_abc" not in info.value.message


def test_environment_token_when_no_credentials(
    api: GitHubAPI, repo: LocalGitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    config = {"repo": REPO, "path": "flows/etl.py", "apiURL": api.url}
    with pytest.raises(RepositoryNotFound, match="needs a token"):  # private and anonymous: invisible
        GitHub.from_config(config).resolve_ref()
    assert "authorization" not in api.log[-1].headers
    monkeypatch.setenv("GITHUB_ACCESS_TOKEN", TOKEN)
    store = GitHub.from_config(config, credentials=None)
    assert store.resolve_ref() == head
    assert api.log[-1].headers["authorization"] == f"Bearer {TOKEN}"
    monkeypatch.setenv("GITHUB_ACCESS_TOKEN", "ghp_stale")
    with pytest.raises(AuthFailed, match="GITHUB_ACCESS_TOKEN environment variable"):
        GitHub.from_config(config).resolve_ref()


def test_public_repository_reads_anonymously(api: GitHubAPI, tmp_path: Path) -> None:
    public = LocalGitRepo(tmp_path, name="public")
    head = public.commit({"flows/etl.py": flow_script("etl", 7)})
    api.add_repo("acme/public-flows", public, private=False)
    store = storage(api, token=None, repo="acme/public-flows", path="flows/etl.py")
    assert store.resolve_ref() == head
    assert store.get_bytes("flows/etl.py") == flow_script("etl", 7)
    assert all("authorization" not in r.headers for r in api.log)


# ---------------------------------------------------------------------- refs and paths
def test_branch_names_with_slashes_and_heads_prefix(api: GitHubAPI, repo: LocalGitRepo) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    feature = repo.commit({"flows/etl.py": flow_script("etl", 2)}, branch="feature/new-etl")
    store = storage(api, ref="feature/new-etl")
    assert store.resolve_ref() == feature
    assert api.log[-1].raw_path == f"/repos/{REPO}/commits/feature%2Fnew-etl"
    assert store.resolve_ref("heads/feature/new-etl") == feature


def test_empty_repository_is_ref_not_found(api: GitHubAPI) -> None:
    with pytest.raises(RefNotFound, match="empty"):
        storage(api, ref="main").resolve_ref()


def test_a_directory_is_not_a_flow_file(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    with pytest.raises(FileNotFound, match="directory"):
        storage(api).read_file("flows", head)


def test_a_directory_is_read_through_the_git_database(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl/main.py": flow_script("etl", 1), "flows/etl/lib/a.py": b"a = 1\n",
                        "flows/etl/lib/b.py": b"a = 1\n", "flows/other.py": b"x = 1\n"})
    assert storage(api).read_path("flows/etl", head) == {"main.py": flow_script("etl", 1), "lib/a.py": b"a = 1\n",
                                                        "lib/b.py": b"a = 1\n"}
    log = api.log
    assert [r.raw_path.removeprefix(f"/repos/{REPO}") for r in log[:2]] == [
        "/contents/flows/etl", f"/git/commits/{head}"]
    root, flows, etl = (repo.run("rev-parse", f"{head}:{p}").decode().strip() for p in ("", "flows", "flows/etl"))
    assert [(r.raw_path.removeprefix(f"/repos/{REPO}"), r.query) for r in log[2:5]] == [
        (f"/git/trees/{root}", {}), (f"/git/trees/{flows}", {}), (f"/git/trees/{etl}", {"recursive": ["1"]})]
    blobs = log[5:]
    assert len(blobs) == 2  # lib/a.py and lib/b.py are the same blob: read once
    assert all(r.raw_path.startswith(f"/repos/{REPO}/git/blobs/") for r in blobs)
    assert all(r.headers["accept"] == "application/vnd.github.raw+json" for r in blobs)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in log)


def test_a_rate_limit_while_reading_a_directory_is_rate_limited(
    api: GitHubAPI, repo: LocalGitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = repo.commit({"flows/etl/main.py": flow_script("etl", 1), "flows/etl/lib.py": b"x = 1\n"})
    store = storage(api)
    read_blob = store._blob

    def throttled_from_now_on(entry: Any) -> bytes:
        api.secondary_rate_limit(5, retry_after=42)
        return read_blob(entry)

    monkeypatch.setattr(store, "_blob", throttled_from_now_on)
    with pytest.raises(RateLimited) as info:
        store.read_path("flows/etl", head)
    assert info.value.retry_after == 42 and info.value.retryable


def test_a_truncated_tree_is_refused(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({f"flows/etl/f{i}.py": b"x = 1\n" for i in range(4)})
    api.tree_entry_limit = 3
    with pytest.raises(InvalidConfig, match="100,000") as info:
        storage(api).read_path("flows/etl", head)
    assert "flows/etl" in info.value.message
    assert not any("/git/blobs/" in r.raw_path for r in api.log)


def test_file_read_from_a_vanished_repository_is_repository_not_found(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    store = storage(api, repo="acme/gone")
    with pytest.raises(RepositoryNotFound):
        store.read_file("flows/etl.py", head)
    with pytest.raises(RepositoryNotFound):  # a gone repository is no absent file: stat must not say None
        store.stat("flows/etl.py")


def test_unreachable_api_is_unavailable() -> None:
    port = free_port()  # nothing listens here
    store = GitHub(REPO, api_url=f"http://127.0.0.1:{port}", access_token=TOKEN)
    with pytest.raises(Unavailable) as info:
        store.resolve_ref("main")
    assert info.value.retryable and "unreachable" in info.value.message
    assert_no_token(info.value.message)


# ---------------------------------------------------------------------- configuration
def test_enterprise_host_uses_api_v3_and_its_web_urls() -> None:
    store = GitHub(REPO, path="flows/etl.py", host="github.example.com")
    assert store.api_base == "https://github.example.com/api/v3"
    assert store.web_url("flows/my flow.py", "a" * 40) == (
        f"https://github.example.com/{REPO}/blob/{'a' * 40}/flows/my%20flow.py"
    )
    assert GitHub(REPO, host="https://github.example.com/").api_base == "https://github.example.com/api/v3"
    assert GitHub(REPO).api_base == "https://api.github.com"
    assert GitHub(REPO, host="github.com").api_base == "https://api.github.com"
    assert GitHub(REPO).web_url("flows/etl.py", "main") == f"https://github.com/{REPO}/blob/main/flows/etl.py"
    explicit = GitHub(REPO, host="github.example.com", api_url="http://proxy:8080/gh/")
    assert explicit.api_base == "http://proxy:8080/gh"


def test_config_keys_round_trip(api: GitHubAPI) -> None:
    config = {
        "repo": REPO,
        "path": "/flows/etl.py",
        "ref": "release",
        "host": "github.example.com",
        "apiURL": api.url,
        "labels": ["prod"],
    }
    store = GitHub.from_config(config, credentials={"GITHUB_ACCESS_TOKEN": TOKEN})
    doc = store.to_status()
    assert doc["type"] == "GitHub"
    assert {k: doc[k] for k in ("repo", "path", "ref", "host", "apiURL")} == {
        "repo": REPO,
        "path": "flows/etl.py",
        "ref": "release",
        "host": "github.example.com",
        "apiURL": api.url,
    }
    assert doc["labels"] == ["prod", "github-flow-storage"]
    again = from_serialized(doc, credentials={"GITHUB_ACCESS_TOKEN": TOKEN})
    assert isinstance(again, GitHub) and again.to_status() == doc


@pytest.mark.parametrize("bad", ["acme", "acme/flows/extra", "https://github.com/acme/flows", "acme/ flows", ""])
def test_repo_must_be_owner_slash_name(bad: str) -> None:
    with pytest.raises(InvalidConfig, match="owner/name"):
        GitHub.from_config({"repo": bad})


# ---------------------------------------------------------------------- the fake stays honest
def test_fake_answers_json_without_the_raw_media_type_and_rejects_unknown_versions(
    api: GitHubAPI, repo: LocalGitRepo
) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    plain = requests.get(f"{api.url}/repos/{REPO}/contents/flows/etl.py", params={"ref": head}, headers=auth, timeout=5)
    assert plain.status_code == 200 and plain.json()["encoding"] == "base64"
    old = requests.get(f"{api.url}/repos/{REPO}", headers={**auth, "X-GitHub-Api-Version": "2010-01-01"}, timeout=5)
    assert old.status_code == 400
    wrong = requests.get(f"{api.url}/repos/{REPO}", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["message"] == "Bad credentials"
    anonymous = requests.get(f"{api.url}/repos/{REPO}", timeout=5)
    assert anonymous.status_code == 404 and anonymous.json()["message"] == "Not Found"
    assert anonymous.headers["x-ratelimit-limit"] == "60"


def test_fake_git_database_answers_as_documented(api: GitHubAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl/main.py": b"x = 1\n", "flows/etl/link": Symlink("main.py"),
                        "flows/etl/vendor": Submodule("1" * 40)})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{api.url}/repos/{REPO}"
    tree = repo.run("rev-parse", f"{head}:flows/etl").decode().strip()
    listing = requests.get(f"{base}/contents/flows/etl", params={"ref": head}, headers=auth, timeout=5).json()
    # the contents API calls a submodule "file" in a directory listing, as its docs say
    assert {e["name"]: e["type"] for e in listing} == {"main.py": "file", "link": "symlink", "vendor": "file"}
    entries = requests.get(f"{base}/git/trees/{tree}", headers=auth, timeout=5).json()["tree"]
    assert {e["path"]: (e["mode"], e["type"]) for e in entries} == {
        "main.py": ("100644", "blob"), "link": ("120000", "blob"), "vendor": ("160000", "commit")}
    by_branch = requests.get(f"{base}/git/trees/main", params={"recursive": "false"}, headers=auth, timeout=5)
    assert by_branch.status_code == 200 and "flows/etl/main.py" in {e["path"] for e in by_branch.json()["tree"]}
    assert requests.get(f"{base}/git/trees/{head}", headers=auth, timeout=5).status_code == 404  # a commit's SHA
    link = next(e for e in entries if e["path"] == "link")
    blob = requests.get(f"{base}/git/blobs/{link['sha']}", headers=auth, timeout=5).json()
    assert blob["encoding"] == "base64" and base64.b64decode(blob["content"]) == b"main.py"  # the target
    commit = requests.get(f"{base}/git/commits/{head}", headers=auth, timeout=5).json()
    assert commit["sha"] == head and commit["tree"]["sha"] == repo.run("rev-parse", f"{head}^{{tree}}").decode().strip()
