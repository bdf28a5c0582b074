"""The conformance suite for the read-only, git-hosted storages (GitHub, GitLab, Bitbucket,
CodeCommit, Git): the parts of the shared suite that apply to a storage that never writes,
plus pinning.

A provider's test module subclasses :class:`GitHostedConformance` and provides two fixtures:

* ``git_repo``: a :class:`tests.gitrepo.LocalGitRepo` that the provider's server (the real
  git server, or the provider's contract fake) serves;
* ``storage_factory``: a callable taking the storage's keyword arguments (``path``, ``ref``,
  and the base Storage options) and returning a storage bound to that repository, with
  valid credentials.

and may override :meth:`make_missing_repo_storage` and :meth:`make_bad_token_storage`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from flowstore.storage import AuthFailed, IntegrityError, InvalidConfig, NotFound, from_serialized
from flowstore.storage.base import SEED_VERSION_KEY
from flowstore.storage.errors import FileNotFound, RefNotFound, RepositoryNotFound
from flowstore.storage.git_base import GitHosted
from tests.helpers.gitrepo import LocalGitRepo

GitFactory = Callable[..., GitHosted]


def flow_script(name: str, answer: int) -> bytes:
    return (f"from flowstore.flow import Flow\n\n\ndef run():\n    return {answer}\n\n\n"
            f"flow = Flow({name!r}, run)\n").encode()


class GitHostedConformance:
    default_label_prefix: str = ""

    @pytest.fixture
    def git_repo(self) -> LocalGitRepo:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def storage_factory(self) -> GitFactory:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _bind(self, git_repo: LocalGitRepo, storage_factory: GitFactory) -> None:
        self.repo = git_repo
        self._factory = storage_factory

    def make_storage(self, **kwargs: Any) -> GitHosted:
        return self._factory(**kwargs)

    def make_missing_repo_storage(self) -> GitHosted:
        """A storage naming a repository that does not exist on the same server."""
        raise NotImplementedError

    def make_bad_token_storage(self) -> GitHosted:
        """A storage on the same repository with a wrong token / password / key."""
        raise NotImplementedError

    # ------------------------------------------------------------------ refs
    def test_resolve_branch_tag_and_commit(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        second = self.repo.commit({"flows/etl.py": flow_script("etl", 2)})
        self.repo.tag("v1", first)
        storage = self.make_storage(path="flows/etl.py", ref="main")
        assert storage.resolve_ref() == second
        assert storage.resolve_ref("main") == second
        assert storage.resolve_ref("v1") == first
        assert storage.resolve_ref(first) == first

    def test_default_branch_when_ref_is_not_set(self) -> None:
        head = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        assert self.make_storage(path="flows/etl.py").resolve_ref() == head

    def test_unknown_ref_is_ref_not_found(self) -> None:
        self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        with pytest.raises(RefNotFound) as info:
            self.make_storage(path="flows/etl.py", ref="no-such-branch").resolve_ref()
        assert info.value.reason == "RefNotFound" and not info.value.retryable
        assert "no-such-branch" in info.value.message

    def test_missing_repository_is_repository_not_found(self) -> None:
        with pytest.raises(RepositoryNotFound) as info:
            self.make_missing_repo_storage().resolve_ref("main")
        assert info.value.reason == "RepositoryNotFound" and not info.value.retryable

    def test_bad_token_is_auth_failed(self) -> None:
        self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        with pytest.raises(AuthFailed) as info:
            self.make_bad_token_storage().resolve_ref("main")
        assert info.value.reason == "AuthFailed"

    # ------------------------------------------------------------------ files
    def test_read_file_at_a_commit_stays_pinned(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        second = self.repo.commit({"flows/etl.py": flow_script("etl", 2)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        assert storage.read_file("flows/etl.py", first) == flow_script("etl", 1)
        assert storage.read_file("flows/etl.py", second) == flow_script("etl", 2)

    def test_missing_file_is_file_not_found(self) -> None:
        head = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        with pytest.raises(FileNotFound) as info:
            storage.read_file("flows/missing.py", head)
        assert isinstance(info.value, NotFound)
        assert info.value.reason == "FileNotFound" and not info.value.retryable
        assert "flows/missing.py" in info.value.message

    def test_binary_large_and_unusual_paths_round_trip(self) -> None:
        big = bytes(range(256)) * 8192  # 2 MiB, every byte value: beyond inline-content API limits
        odd = "flows/my flow ü #1.py"
        head = self.repo.commit({"data/big.bin": big, odd: b"x = 1\n"})
        storage = self.make_storage(path=odd, ref="main")
        assert storage.read_file("data/big.bin", head) == big
        assert storage.read_file(odd, head) == b"x = 1\n"

    def test_stat_and_get_bytes_follow_the_pinned_commit(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        self.repo.commit({"flows/etl.py": flow_script("etl", 2)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        storage.pin(first)
        data = flow_script("etl", 1)
        assert storage.get_bytes("flows/etl.py") == data
        assert storage.get_bytes("/flows/etl.py") == data  # the seed's leading slash
        info = storage.stat("flows/etl.py")
        assert info is not None and info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert storage.stat("flows/missing.py") is None
        assert first in storage.url_for("flows/etl.py")

    def test_read_only(self) -> None:
        self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        with pytest.raises(InvalidConfig, match="read-only"):
            storage.put_bytes("flows/etl.py", b"x")
        storage.delete("flows/etl.py")  # never deletes: the file is still there
        assert storage.get_bytes("flows/etl.py") == flow_script("etl", 1)

    # ------------------------------------------------------------------ the seed's interface
    def test_add_flow_returns_the_path_and_build_checks_it(self) -> None:
        self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="/flows/etl.py", ref="main")
        assert storage.add_flow("etl") == "flows/etl.py"
        assert "etl" in storage
        with pytest.raises(ValueError, match="Name conflict"):
            storage.add_flow("etl")
        assert storage.build() is storage
        assert storage.stored_as_script is True
        missing = self.make_storage(path="flows/not-committed.py", ref="main")
        missing.add_flow("other")
        with pytest.raises(FileNotFound):
            missing.build()

    def test_get_flow_verifies_then_loads(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        self.repo.commit({"flows/etl.py": flow_script("etl", 2)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        storage.add_flow("etl")
        assert storage.get_flow().run() == 2
        assert storage.get_flow("flows/etl.py", ref=first).run() == 1
        good = hashlib.sha256(flow_script("etl", 2)).hexdigest()
        assert storage.get_flow("flows/etl.py", sha256=good).run() == 2
        with pytest.raises(IntegrityError):
            storage.get_flow("flows/etl.py", sha256="0" * 64)
        with pytest.raises(ValueError, match="not contained"):
            storage.get_flow("flows/other.py")

    def test_serialized_pinned_storage_reads_the_pinned_commit(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="flows/etl.py", ref="main", labels=["prod"])
        storage.add_flow("etl")
        storage.pin(storage.resolve_ref())
        doc = storage.to_status()
        assert doc[storage.ref_key] == first and doc["requestedRef"] == "main"
        assert doc["flows"] == {"etl": "flows/etl.py"} and doc["storedAsScript"] is True
        assert "prod" in doc["labels"]
        assert any(label.startswith(self.default_label_prefix) for label in doc["labels"])
        self.repo.commit({"flows/etl.py": flow_script("etl", 2)})  # the branch moves on
        again = from_serialized(doc, **self.serialized_overrides())
        assert type(again) is type(storage)
        assert again.get_flow("flows/etl.py").run() == 1
        assert again.ref == "main" and again.commit == first
        for value in self.secret_values():
            assert value not in json.dumps(doc), "to_status() must never hold secret values"

    #: the seed's schema carries how to reach this test's server (GitLab's and Bitbucket's
    #: apiURL, and plain git's http:// URL, have no seed field)
    seed_reaches_server = True

    def test_seed_schema_names_the_pinned_commit(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        storage.add_flow("etl")
        storage.pin(storage.resolve_ref())
        doc = json.loads(json.dumps(storage.serialize()))
        assert doc[SEED_VERSION_KEY] == "1.4.1" and doc["flows"] == {"etl": "flows/etl.py"}
        assert first in doc.values(), "the seed's document names the pinned commit, not the branch"
        assert "main" not in doc.values()
        for value in self.secret_values():
            assert value not in json.dumps(doc), "serialize() must never hold secret values"
        again = from_serialized(doc, **self.serialized_overrides())
        assert type(again) is type(storage) and again.serialize() == doc
        if self.seed_reaches_server:
            self.repo.commit({"flows/etl.py": flow_script("etl", 2)})  # the branch moves on
            assert again.get_flow("flows/etl.py").run() == 1

    def serialized_overrides(self) -> dict[str, Any]:
        """What serialization leaves out (credentials), as ``from_serialized`` overrides."""
        return {}

    def secret_values(self) -> list[str]:
        """The credential values the factory's storages use (never to appear in serialize())."""
        return []
