"""Verified git sources (``spec.<backend>.verify``): only a commit (or tag) signed by a key of the
verify Secret is pinned, checked by git itself on the raw objects.

The same repository, with the same signed and unsigned commits and tags, is served by the real
git http-backend (the ``Git`` storage) and by each provider's contract fake (GitHub's REST
``verification`` payload and signature; GitLab, Bitbucket Cloud and Data Center, and CodeCommit
over git's smart HTTP at the clone URL their API names): every storage must reach the same
verdict, naming the same key."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage.errors import InvalidConfig, RefNotFound, Rejected
from flowstore.storage.git import Bitbucket, CodeCommit, Git, GitHosted, GitHub, GitLab
from flowstore.storage.git.verify import SourceUnverified, VerifyPolicy
from tests.fakes.bitbucket_api import BitbucketCloudAPI, BitbucketServerAPI
from tests.fakes.codecommit_api import CodeCommitAPI
from tests.fakes.github_api import GitHubAPI
from tests.fakes.gitlab_api import GitLabAPI
from tests.helpers.git_server import GitServer
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.gitsigning import GPGSigner, SSHSigner

TOKEN = "verify-canary-token-0123456789abcdef"
KEY_ID, SECRET_KEY = "AKIAVERIFYFAKE000001", "verify-secret-access-key-0123456789"
FLOW = b"from flowstore.flow import Flow\n\nflow = Flow('etl', lambda: 42)\n"


@dataclasses.dataclass
class Keys:
    alice: SSHSigner  # trusted (in allowed_signers)
    mallory: SSHSigner  # not trusted
    bob: GPGSigner  # trusted (bob.asc)
    eve: GPGSigner  # not trusted

    def secret(self) -> dict[str, str]:
        return {"allowed_signers": self.alice.allowed_signers(), "bob.asc": self.bob.armored()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    directory = tmp_path_factory.mktemp("keys")
    made = Keys(alice=SSHSigner.create(directory, "alice@example.com"),
                mallory=SSHSigner.create(directory, "mallory@example.com"),
                bob=GPGSigner.create(directory, "Bob", "bob@example.com"),
                eve=GPGSigner.create(directory, "Eve", "eve@example.com"))
    yield made
    made.bob.stop_agent()
    made.eve.stop_agent()


def policy(keys: Keys, mode: str = "HEAD") -> VerifyPolicy:
    found = VerifyPolicy.from_config({"mode": mode, "secretRef": {"name": "signers"}}, keys.secret(), backend="git")
    assert found is not None
    return found


Factory = Callable[[str | None], GitHosted]


@pytest.fixture(params=["git", "github", "gitlab", "bitbucket-cloud", "bitbucket-server", "codecommit"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LocalGitRepo, Factory, list[Any]]]:
    """(the repository, a storage at a ref, the server's request log)."""
    kind = request.param
    root = tmp_path / "repos"
    root.mkdir()
    repo = LocalGitRepo(root)
    if kind == "git":
        with GitServer(root, "user", TOKEN) as server:
            yield repo, lambda ref: Git(url=f"{server.url}/{repo.name}.git", username="user", password=TOKEN,
                                        ref=ref), server.log
    elif kind == "github":
        with GitHubAPI(token=TOKEN) as fake:
            assert isinstance(fake, GitHubAPI)
            fake.add_repo("acme/flows", repo)
            yield repo, lambda ref: GitHub("acme/flows", ref=ref, api_url=fake.url, access_token=TOKEN), fake.log
    elif kind == "gitlab":
        with GitLabAPI(token=TOKEN) as fake:
            assert isinstance(fake, GitLabAPI)
            fake.add_project("acme/flows", repo)
            yield repo, lambda ref: GitLab("acme/flows", ref=ref, api_url=fake.api_url, access_token=TOKEN), fake.log
    elif kind == "bitbucket-cloud":
        with BitbucketCloudAPI(access_token=TOKEN) as fake:
            assert isinstance(fake, BitbucketCloudAPI)
            fake.add_repo("acme", repo.name, repo)
            yield repo, lambda ref: Bitbucket(workspace="acme", repo=repo.name, ref=ref, api_url=f"{fake.url}/2.0",
                                              credentials={"BITBUCKET_ACCESS_TOKEN": TOKEN}), fake.log
    elif kind == "bitbucket-server":
        with BitbucketServerAPI(token=TOKEN) as fake:
            assert isinstance(fake, BitbucketServerAPI)
            fake.add_repo("PROJ", repo.name, repo)
            yield repo, lambda ref: Bitbucket("PROJ", repo.name, host="bitbucket.example.com", ref=ref,
                                              api_url=f"{fake.url}/rest/api/1.0",
                                              credentials={"BITBUCKET_ACCESS_TOKEN": TOKEN}), fake.log
    else:
        with CodeCommitAPI(access_key_id=KEY_ID, secret_access_key=SECRET_KEY, region="eu-west-1") as fake:
            assert isinstance(fake, CodeCommitAPI)
            fake.add_repo(repo.name, repo)
            yield repo, lambda ref: CodeCommit(repo.name, commit=ref, region="eu-west-1", endpoint_url=fake.url,
                                               credentials={"AWS_ACCESS_KEY_ID": KEY_ID,
                                                            "AWS_SECRET_ACCESS_KEY": SECRET_KEY}), fake.log


def verified(storage: GitHosted, keys: Keys, mode: str = "HEAD") -> tuple[str, Any]:
    storage.verify_policy = policy(keys, mode)
    return storage.resolve_verified()


def test_a_signed_push_is_pinned_an_unsigned_one_is_not(provider: tuple[LocalGitRepo, Factory, list[Any]],
                                                        keys: Keys) -> None:
    repo, make, _ = provider
    signed = repo.commit({"flows/etl.py": FLOW}, message="signed", signer=keys.alice)
    commit, verification = verified(make("main"), keys)
    assert commit == signed
    assert verification.commit_key == f"SSH key {keys.alice.fingerprint} (alice@example.com)"
    assert make("main").read_file("flows/etl.py", commit) == FLOW

    unsigned = repo.commit({"flows/etl.py": FLOW + b"# changed\n"}, message="unsigned")
    with pytest.raises(SourceUnverified, match=f"commit {unsigned[:12]} is not signed"):
        verified(make("main"), keys)

    by_mallory = repo.commit({"flows/etl.py": FLOW + b"# mallory\n"}, message="mallory", signer=keys.mallory)
    refused = re.escape(f"{by_mallory[:12]} is signed by SSH key {keys.mallory.fingerprint}")
    with pytest.raises(SourceUnverified, match=refused):
        verified(make("main"), keys)

    by_bob = repo.commit({"flows/etl.py": FLOW + b"# bob\n"}, message="bob", signer=keys.bob)
    commit, verification = verified(make("main"), keys)
    assert commit == by_bob and verification.commit_key == f"OpenPGP key {keys.bob.fingerprint} (Bob <bob@example.com>)"

    by_eve = repo.commit({"flows/etl.py": FLOW + b"# eve\n"}, message="eve", signer=keys.eve)
    with pytest.raises(SourceUnverified, match=f"{by_eve[:12]} is signed by OpenPGP key"):
        verified(make("main"), keys)


def test_tags_signed_by_an_unknown_key_are_refused(provider: tuple[LocalGitRepo, Factory, list[Any]],
                                                   keys: Keys) -> None:
    repo, make, _ = provider
    commit = repo.commit({"flows/etl.py": FLOW}, signer=keys.alice)
    repo.tag("v1", commit, message="release 1", signer=keys.bob)
    repo.tag("v2", commit, message="release 2", signer=keys.mallory)
    repo.tag("v3", commit)  # lightweight
    repo.tag("v4", commit, message="annotated, unsigned")

    pinned, verification = verified(make("v1"), keys, "Tag")
    assert pinned == commit and verification.tag == "v1" and verification.commit_key is None
    assert verification.tag_key == f"OpenPGP key {keys.bob.fingerprint} (Bob <bob@example.com>)"
    both = verified(make("v1"), keys, "TagAndHEAD")[1]
    assert both.tag_key and both.commit_key == f"SSH key {keys.alice.fingerprint} (alice@example.com)"

    with pytest.raises(SourceUnverified, match=re.escape(f"signed by SSH key {keys.mallory.fingerprint}")):
        verified(make("v2"), keys, "Tag")
    with pytest.raises(SourceUnverified, match="not an annotated tag"):
        verified(make("v3"), keys, "Tag")
    with pytest.raises(SourceUnverified, match="is not signed"):
        verified(make("v4"), keys, "Tag")
    with pytest.raises(InvalidConfig, match=r"needs .* to name a tag"):
        verified(make(None), keys, "Tag")
    with pytest.raises(RefNotFound):
        verified(make("v9"), keys, "Tag")


def test_a_commit_signed_by_mallory_but_tagged_by_bob_fails_tag_and_head(
        provider: tuple[LocalGitRepo, Factory, list[Any]], keys: Keys) -> None:
    repo, make, _ = provider
    commit = repo.commit({"flows/etl.py": FLOW}, signer=keys.mallory)
    repo.tag("v1", commit, message="release", signer=keys.bob)
    assert verified(make("v1"), keys, "Tag")[0] == commit
    with pytest.raises(SourceUnverified, match=re.escape(f"SSH key {keys.mallory.fingerprint}")):
        verified(make("v1"), keys, "TagAndHEAD")


def test_credentials_go_only_to_the_provider(keys: Keys, tmp_path: Path) -> None:
    repo = LocalGitRepo(tmp_path)
    repo.commit({"flows/etl.py": FLOW}, signer=keys.alice)
    with GitLabAPI(token=TOKEN) as fake:
        assert isinstance(fake, GitLabAPI)
        fake.add_project("acme/flows", repo)
        storage = GitLab("acme/flows", ref="main", api_url=fake.api_url, access_token=TOKEN)
        original = storage.project

        def elsewhere() -> dict[str, Any]:  # an API answer naming another host
            return {**original(), "http_url_to_repo": "http://attacker.example/acme/flows.git"}

        storage.project = elsewhere  # type: ignore[method-assign]
        with pytest.raises(Rejected, match="refusing to send credentials there"):
            verified(storage, keys)


def test_github_is_never_believed(keys: Keys, tmp_path: Path) -> None:
    """The fake says ``verified: true`` for every signed commit, as GitHub does for any key an
    account uploaded: a commit signed by mallory is still refused."""
    repo = LocalGitRepo(tmp_path)
    commit = repo.commit({"flows/etl.py": FLOW}, signer=keys.mallory)
    with GitHubAPI(token=TOKEN) as fake:
        assert isinstance(fake, GitHubAPI)
        fake.add_repo("acme/flows", repo)
        storage = GitHub("acme/flows", ref="main", api_url=fake.url, access_token=TOKEN)
        doc = storage._json(f"/git/commits/{commit}", "read")
        assert doc["verification"]["verified"] is True
        with pytest.raises(SourceUnverified, match="which Secret 'signers'"):
            verified(storage, keys)


def test_a_tampered_payload_does_not_vouch_for_the_commit(keys: Keys, tmp_path: Path) -> None:
    """A provider that answers another commit's signed payload for the pinned id is caught by the
    id check before any signature is looked at."""
    from flowstore.storage.git import verify as verifying

    repo = LocalGitRepo(tmp_path)
    good = repo.commit({"flows/etl.py": FLOW}, signer=keys.alice)
    bad = repo.commit({"flows/etl.py": b"import os\n"})
    found = verifying.SignedRef(commit=bad, commit_object=verifying.RawObject("commit", bad, repo.raw(good)[1]))
    with pytest.raises(SourceUnverified, match=f"hashes to {good[:12]}, not {bad[:12]}"):
        verifying.verify(policy(keys), found, what="test")


def test_a_secret_without_keys_is_a_spec_error() -> None:
    with pytest.raises(InvalidConfig, match="holds no key"):
        VerifyPolicy.from_config({"mode": "HEAD", "secretRef": {"name": "s"}}, {"other": "x"}, backend="git")
    with pytest.raises(InvalidConfig, match="must be one of"):
        VerifyPolicy.from_config({"mode": "Any", "secretRef": {"name": "s"}}, {"allowed_signers": "x"}, backend="git")
