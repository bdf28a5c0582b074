"""The CodeCommit storage against the CodeCommit contract fake (tests/fakes/codecommit_api.py),
which serves real git repositories over AWS JSON 1.1 to a real boto3 client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage import AuthFailed, InvalidConfig, StorageError, from_serialized
from flowstore.storage.errors import FileNotFound, RateLimited, RefNotFound, RepositoryNotFound
from flowstore.storage.git.base import GitHosted
from flowstore.storage.git.codecommit import CodeCommit
from tests.backends.git_conformance import GitFactory, GitHostedConformance, SymlinkConformance, flow_script
from tests.fakes.codecommit_api import CodeCommitAPI
from tests.helpers.gitrepo import LocalGitRepo, Submodule, Symlink

REGION = "eu-west-1"
KEY_ID = "AKIAFLOWSTORETEST001"
SECRET_KEY = "s3cr3t/AccessKey+Value0123456789abcdefgh"
SESSION = "FwoGZXIvYXdzEFlowstoreSessionTokenValue"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
#: one attempt: throttling tests must not sleep through boto3's own retries
NO_RETRIES = {"config": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}


@pytest.fixture
def repo(tmp_path: Path) -> LocalGitRepo:
    return LocalGitRepo(tmp_path)


# one server per module (stopping one takes the server loop's 0.5 s poll); each test adds its
# own repository (unique name) and starts with an empty log and no throttling
@pytest.fixture(scope="module")
def shared_fake() -> Iterator[CodeCommitAPI]:
    with CodeCommitAPI(access_key_id=KEY_ID, region=REGION) as server:
        assert isinstance(server, CodeCommitAPI)
        yield server


@pytest.fixture
def fake(shared_fake: CodeCommitAPI, repo: LocalGitRepo) -> CodeCommitAPI:
    shared_fake.add_repo(repo.name, repo)
    shared_fake.throttle(0)
    shared_fake.log.clear()
    return shared_fake


def make(fake: CodeCommitAPI, repo: str, **kwargs: Any) -> CodeCommit:
    kwargs.setdefault("credentials", CREDENTIALS)
    return CodeCommit(repo, region=REGION, endpoint_url=fake.url, **kwargs)


def auth_header(fake: CodeCommitAPI) -> str:
    return fake.log[-1].headers["authorization"]


class TestCodeCommitConformance(GitHostedConformance, SymlinkConformance):
    default_label_prefix = "codecommit-flow-storage"

    @pytest.fixture
    def storage_factory(self, fake: CodeCommitAPI, repo: LocalGitRepo) -> GitFactory:
        self.fake = fake

        def factory(ref: str | None = None, **kwargs: Any) -> GitHosted:
            return make(fake, repo.name, commit=ref, **kwargs)

        return factory

    def make_missing_repo_storage(self) -> GitHosted:
        return make(self.fake, "no-such-repo")

    def requests_seen(self) -> int:
        return len(self.fake.log)

    def make_bad_token_storage(self) -> GitHosted:
        return make(self.fake, self.repo.name,
                    credentials={"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000", "AWS_SECRET_ACCESS_KEY": SECRET_KEY})

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": CREDENTIALS}

    def secret_values(self) -> list[str]:
        return [SECRET_KEY]


def test_requests_are_signed_with_the_configured_key(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = make(fake, repo.name, path="flows/etl.py")
    assert storage.resolve_ref() == head
    assert storage.get_bytes("flows/etl.py") == flow_script("etl", 1)
    assert fake.operations() == ["GetRepository", "GetBranch", "GetRepository", "GetBranch", "GetFile"]
    for request in fake.log:
        assert request.headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={KEY_ID}/") and f"/{REGION}/codecommit/aws4_request" in \
            request.headers["authorization"]
        assert SECRET_KEY not in json.dumps(request.headers)
    assert json.loads(fake.log[-1].body) == {"repositoryName": repo.name, "commitSpecifier": head,
                                             "filePath": "flows/etl.py"}


def test_client_uses_the_configured_endpoint_and_region(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    storage = CodeCommit.from_config({"repo": repo.name, "region": REGION, "endpointURL": fake.url,
                                      "clientOptions": {"config": {"read_timeout": 7}}}, credentials=CREDENTIALS)
    assert isinstance(storage, CodeCommit)
    client = storage._client()
    assert client.meta.endpoint_url == fake.url and client.meta.region_name == REGION
    assert client.meta.config.read_timeout == 7 and client.meta.config.connect_timeout == 5
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage.resolve_ref()
    assert f"/{REGION}/codecommit/" in auth_header(fake)
    # the wrong region is refused by the (fake) service: a client really signs for its region
    other = CodeCommit(repo.name, region="us-west-2", endpoint_url=fake.url, credentials=CREDENTIALS)
    with pytest.raises(AuthFailed):
        other.resolve_ref()


def test_session_token_is_sent(repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    with CodeCommitAPI(access_key_id=KEY_ID, region=REGION, session_token=SESSION) as server:
        assert isinstance(server, CodeCommitAPI)
        server.add_repo(repo.name, repo)
        with pytest.raises(AuthFailed):
            make(server, repo.name).resolve_ref("main")
        storage = make(server, repo.name, credentials={**CREDENTIALS, "AWS_SESSION_TOKEN": SESSION})
        assert storage.resolve_ref("main") == head
        assert server.log[-1].headers["x-amz-security-token"] == SESSION


def test_environment_credentials_when_none_are_given(fake: CodeCommitAPI, repo: LocalGitRepo,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    assert make(fake, repo.name, credentials=None).resolve_ref("main") == head
    assert auth_header(fake).startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")


def test_throttling_is_rate_limited(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = make(fake, repo.name, client_options=NO_RETRIES)
    fake.throttle(1)
    with pytest.raises(RateLimited) as info:
        storage.read_file("flows/etl.py", head)
    assert info.value.retryable and info.value.retry_after == 5.0
    assert "ThrottlingException" in info.value.message and repo.name in info.value.message
    assert storage.read_file("flows/etl.py", head) == flow_script("etl", 1)


def test_tags_and_refs_resolve_through_get_folder(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    first = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    feature = repo.commit({"flows/etl.py": flow_script("etl", 2)}, branch="feature/x")
    repo.tag("v1", first)
    storage = make(fake, repo.name)
    fake.log.clear()
    assert storage.resolve_ref("v1") == first
    assert fake.operations() == ["GetBranch", "GetFolder"]
    assert storage.resolve_ref("feature/x") == feature
    assert storage.resolve_ref("refs/heads/feature/x") == feature
    assert storage.resolve_ref("refs/tags/v1") == first
    with pytest.raises(RefNotFound, match="'refs/tags/v2'"):
        storage.resolve_ref("refs/tags/v2")
    with pytest.raises(RefNotFound, match=r"0{40}"):
        storage.resolve_ref("0" * 40)


def test_missing_repository_on_every_call(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    storage = make(fake, "no-such-repo", path="flows/etl.py")
    with pytest.raises(RepositoryNotFound, match=f"no-such-repo does not exist in region {REGION}"):
        storage.resolve_ref()
    with pytest.raises(RepositoryNotFound):
        storage.read_file("flows/etl.py", "a" * 40)


def test_file_not_found_names_path_and_commit(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    with pytest.raises(FileNotFound) as info:
        make(fake, repo.name).read_file("flows", head)  # a folder is not a file
    assert "flows" in info.value.message and head in info.value.message


def test_a_folder_is_read_with_get_folder_get_file_and_get_blob(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl/main.py": flow_script("etl", 1), "flows/etl/lib/a.py": b"a = 1\n",
                        "flows/etl/current.py": Symlink("main.py")})
    storage = make(fake, repo.name)
    fake.log.clear()
    assert storage.read_path("flows/etl", head) == {"main.py": flow_script("etl", 1), "lib/a.py": b"a = 1\n",
                                                    "current.py": flow_script("etl", 1)}
    assert fake.operations() == ["GetFile", "GetFolder", "GetFolder", "GetBlob", "GetFile", "GetFile"]
    bodies = [json.loads(r.body) for r in fake.log]
    assert [b.get("folderPath") for b in bodies[1:3]] == ["flows/etl", "flows/etl/lib"]
    assert bodies[3] == {"repositoryName": repo.name, "blobId": repo.blob_id(head, "flows/etl/current.py")}
    assert sorted(b["filePath"] for b in bodies[4:]) == ["flows/etl/lib/a.py", "flows/etl/main.py"]
    assert all(b["commitSpecifier"] == head for i, b in enumerate(bodies) if i != 3)


def test_fake_get_folder_tells_links_submodules_and_modes(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/main.py": b"x = 1\n", "flows/link": Symlink("main.py"),
                        "flows/vendor": Submodule("3" * 40)})
    client = make(fake, repo.name)._client()
    folder = client.get_folder(repositoryName=repo.name, commitSpecifier=head, folderPath="/flows")
    assert [(f["relativePath"], f["fileMode"]) for f in folder["files"]] == [("main.py", "NORMAL")]
    assert [(f["relativePath"], f["fileMode"]) for f in folder["symbolicLinks"]] == [("link", "SYMLINK")]
    assert [(m["relativePath"], m["commitId"]) for m in folder["subModules"]] == [("vendor", "3" * 40)]
    blob = client.get_blob(repositoryName=repo.name, blobId=folder["symbolicLinks"][0]["blobId"])
    assert blob["content"] == b"main.py"


def test_urls_and_serialization(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = CodeCommit.from_config({"repo": repo.name, "path": "flows/etl.py", "commit": "main",
                                      "region": REGION, "endpointURL": fake.url, "labels": ["prod"],
                                      "clientOptions": {"config": {"connect_timeout": 3}}},
                                     credentials=CREDENTIALS)
    assert storage.web_url("flows/my flow.py", head) == (
        f"https://{REGION}.console.aws.amazon.com/codesuite/codecommit/repositories/{repo.name}/browse/{head}"
        f"/--/flows/my%20flow.py?region={REGION}")
    assert storage.repo_name() == f"codecommit::{REGION}://{repo.name}"
    doc = storage.to_status()
    assert doc["type"] == "CodeCommit" and doc["commit"] == "main" and doc["repo"] == repo.name
    assert doc["region"] == REGION and doc["endpointURL"] == fake.url and doc["path"] == "flows/etl.py"
    assert doc["clientOptions"] == {"config": {"connect_timeout": 3}}
    assert set(doc["labels"]) == {"prod", "codecommit-flow-storage"}
    assert SECRET_KEY not in json.dumps(doc) and KEY_ID not in json.dumps(doc)
    again = from_serialized(doc, credentials=CREDENTIALS)
    assert again.get_bytes("flows/etl.py") == flow_script("etl", 1)


def test_credentials_never_in_messages(fake: CodeCommitAPI, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    bad = make(fake, repo.name, credentials={"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000",
                                             "AWS_SECRET_ACCESS_KEY": "wrong/Secret+Key0123456789"})
    errors: list[StorageError] = []
    for call in (lambda: bad.resolve_ref("main"), lambda: bad.read_file("flows/etl.py", head),
                 lambda: make(fake, repo.name).read_file("missing.py", head)):
        with pytest.raises(StorageError) as info:
            call()
        errors.append(info.value)
    assert isinstance(errors[0], AuthFailed) and "AWS_ACCESS_KEY_ID" in errors[0].message
    for error in errors:
        text = f"{error.message} {error!r} {error.__cause__!r}"
        for secret in (SECRET_KEY, "wrong/Secret+Key0123456789"):
            assert secret not in text
    assert errors[0].__cause__ is None  # the SDK's text may echo the key id: not chained
    assert "wrong" not in repr(bad) and SECRET_KEY not in repr(make(fake, repo.name))


def test_configuration_errors() -> None:
    with pytest.raises(InvalidConfig, match="repo"):
        CodeCommit("")
    with pytest.raises(InvalidConfig, match="AWS_SECRET_ACCESS_KEY"):
        CodeCommit("flows", credentials={"AWS_ACCESS_KEY_ID": KEY_ID})
    with pytest.raises(InvalidConfig, match="aws_secret_access_key") as info:
        CodeCommit("flows", client_options={"aws_secret_access_key": SECRET_KEY})
    assert SECRET_KEY not in info.value.message
    with pytest.raises(InvalidConfig, match="clientOptions"):
        CodeCommit.from_config({"repo": "flows", "clientOptions": ["not", "a", "mapping"]})
