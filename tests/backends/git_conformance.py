"""The conformance suite for the read-only, git-hosted storages (GitHub, GitLab, Bitbucket,
CodeCommit, Git): the parts of the shared suite that apply to a storage that never writes,
plus pinning.

A provider's test module subclasses :class:`GitHostedConformance` and provides two fixtures:

* ``repo`` (a module fixture, which ``git_repo`` hands on): a
  :class:`tests.gitrepo.LocalGitRepo` that the provider's server (the real git server, or the
  provider's contract fake) serves;
* ``storage_factory``: a callable taking the storage's keyword arguments (``path``, ``ref``,
  and the base Storage options) and returning a storage bound to that repository, with
  valid credentials.

and may override :meth:`make_missing_repo_storage` and :meth:`make_bad_token_storage`.

For directories (``read_path``) it also provides :meth:`requests_seen` (how many requests the
provider's server has answered so far: the fake's log, the git server's log) and says, with the
class attributes below, what one file costs and what its API can tell; :meth:`use_small_pages`
makes the server's listings paginate after a few entries where the API has a page size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from flowstore.storage import AuthFailed, IntegrityError, InvalidConfig, NotFound, from_serialized
from flowstore.storage.base import SEED_VERSION_KEY
from flowstore.storage.errors import FileNotFound, RefNotFound, RepositoryNotFound
from flowstore.storage.git import base as git_base
from flowstore.storage.git.base import GitHosted
from tests.helpers.gitrepo import LocalGitRepo, Submodule, Symlink

GitFactory = Callable[..., GitHosted]


def flow_script(name: str, answer: int) -> bytes:
    return (f"from flowstore.flow import Flow\n\n\ndef run():\n    return {answer}\n\n\n"
            f"flow = Flow({name!r}, run)\n").encode()


#: a flow directory and its neighbours: a sibling directory whose name starts the same, a file
#: named like it, binary bytes, a name to quote
DIRECTORY: dict[str, bytes] = {
    "flows/etl/main.py": flow_script("etl", 1),
    "flows/etl/lib/helpers.py": b"def helper():\n    return 1\n",
    "flows/etl/lib/sql/query.sql": b"select 1;\n",
    "flows/etl/data.bin": bytes(range(256)) * 4 + b"\0\r\n",
    "flows/etl/my file \u00fc.txt": "gr\u00fc\u00dfe\n".encode(),
    "flows/etl2/other.py": b"x = 2\n",
    "flows/etl.py": b"x = 3\n",
}
IN_ETL = {path.removeprefix("flows/etl/"): data for path, data in DIRECTORY.items() if path.startswith("flows/etl/")}


class GitHostedConformance:
    default_label_prefix: str = ""
    #: requests one file read costs (None: whatever read_file costs, e.g. a git fetch)
    file_read_requests: int | None = 1
    #: requests that reading one file of a directory costs once it is listed (0: read locally)
    content_requests_per_file: int = 1
    #: whether the provider's listing tells symlinks from files (Bitbucket Data Center's does not)

    @pytest.fixture
    def git_repo(self, repo: LocalGitRepo) -> LocalGitRepo:
        """The provider module's own ``repo`` fixture (each provider's test module has one)."""
        return repo

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

    def requests_seen(self) -> int:
        """How many requests the provider's server has answered so far."""
        raise NotImplementedError

    def use_small_pages(self, size: int) -> bool:
        """Make the server's directory listings hold at most `size` entries a page, where the
        API paginates them; returns whether it does."""
        return False

    def cost(self, call: Callable[[], Any]) -> tuple[Any, int]:
        """`call()`'s result and the requests it made."""
        before = self.requests_seen()
        result = call()
        return result, self.requests_seen() - before

    def refused(self, call: Callable[[], Any]) -> tuple[InvalidConfig, int]:
        """The InvalidConfig `call()` raises and the requests it made."""
        before = self.requests_seen()
        with pytest.raises(InvalidConfig) as info:
            call()
        return info.value, self.requests_seen() - before

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

    # ------------------------------------------------------------------ directories (read_path)
    def test_read_path_of_a_directory_returns_every_file_under_it(self) -> None:
        head = self.repo.commit(DIRECTORY)
        storage = self.make_storage(path="flows/etl", ref="main")
        files = storage.read_path("flows/etl", head)
        assert files == IN_ETL
        assert isinstance(files, dict) and list(files) == sorted(IN_ETL)
        assert storage.read_path("/flows/etl/", head) == IN_ETL  # normalised as normalize_path does
        assert storage.read_path("flows/etl/lib", head) == {"helpers.py": IN_ETL["lib/helpers.py"],
                                                             "sql/query.sql": IN_ETL["lib/sql/query.sql"]}

    def test_read_path_of_a_file_costs_what_read_file_costs(self) -> None:
        first = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        storage = self.make_storage(path="flows/etl.py", ref="main")
        data, file_cost = self.cost(lambda: storage.read_file("flows/etl.py", first))
        assert data == flow_script("etl", 1)
        second = self.repo.commit({"flows/etl.py": flow_script("etl", 2)})  # unread: a git fetch again
        data, path_cost = self.cost(lambda: storage.read_path("flows/etl.py", second))
        assert data == flow_script("etl", 2)
        assert path_cost == file_cost
        if self.file_read_requests is not None:
            assert path_cost == self.file_read_requests

    def test_read_path_of_nothing_is_file_not_found(self) -> None:
        head = self.repo.commit(DIRECTORY)
        storage = self.make_storage(path="flows/etl", ref="main")
        for missing in ("flows/missing", "flows/etl/nope.py", "nowhere/at/all"):
            with pytest.raises(FileNotFound) as info:
                storage.read_path(missing, head)
            assert missing in info.value.message and not info.value.retryable

    def test_submodules_are_refused(self) -> None:
        other = "1234567890abcdef1234567890abcdef12345678"
        head = self.repo.commit({**DIRECTORY, "flows/etl/vendor/lib": Submodule(other), "flows/sub": Submodule(other)})
        storage = self.make_storage(path="flows/etl")
        with pytest.raises(InvalidConfig) as info:
            storage.read_path("flows/etl", head)
        assert "flows/etl/vendor/lib" in info.value.message and "submodule" in info.value.message
        # one beside the directory is no part of it; one the caller leaves out is not read
        assert storage.read_path("flows/etl/lib", head) == {"helpers.py": IN_ETL["lib/helpers.py"],
                                                             "sql/query.sql": IN_ETL["lib/sql/query.sql"]}
        assert storage.read_path("flows/etl", head, keep=lambda path: not path.startswith("vendor/")) == IN_ETL

    def test_more_files_than_the_bound_are_refused_before_any_file_is_read(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        many = {f"flows/many/f{i}.py": f"x = {i}\n".encode() for i in range(6)}
        head = self.repo.commit(many)
        storage = self.make_storage(path="flows/many")
        storage.read_file("flows/many/f0.py", head)  # a git storage fetches the commit here, once
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 3)
        error, refused_cost = self.refused(lambda: storage.read_path("flows/many", head))
        assert "'flows/many'" in error.message and "more than 3 files" in error.message
        assert "4 listed" in error.message  # the count found when the listing stopped
        assert "spec.source.ignore" in error.message and "smaller directory" in error.message
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 6)
        files, full_cost = self.cost(lambda: storage.read_path("flows/many", head))
        assert files == {path.removeprefix("flows/many/"): data for path, data in many.items()}
        assert refused_cost == full_cost - 6 * self.content_requests_per_file  # the listing only

    def test_more_bytes_than_the_bound_are_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        big = {f"flows/big/f{i}.txt": bytes([65 + i]) * 60 for i in range(3)}
        head = self.repo.commit(big)
        storage = self.make_storage(path="flows/big")
        storage.read_file("flows/big/f0.txt", head)
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_BYTES", 100)
        error, refused_cost = self.refused(lambda: storage.read_path("flows/big", head))
        assert "'flows/big'" in error.message and "more than 100 bytes" in error.message
        assert "spec.source.ignore" in error.message
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_BYTES", 180)
        files, full_cost = self.cost(lambda: storage.read_path("flows/big", head))
        assert files == {path.removeprefix("flows/big/"): data for path, data in big.items()}
        # reading stopped at the file that passed the bound (or, where the listing gives sizes,
        # before the first)
        assert refused_cost <= full_cost - self.content_requests_per_file

    def test_keep_leaves_files_out_of_the_bound_and_unread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        tests = {f"flows/etl/tests/t{i}.py": f"assert {i}\n".encode() for i in range(9)}  # all different
        head = self.repo.commit({**DIRECTORY, **tests})
        storage = self.make_storage(path="flows/etl")
        storage.read_file("flows/etl/main.py", head)
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", len(IN_ETL))
        files, cost = self.cost(
            lambda: storage.read_path("flows/etl", head, keep=lambda path: not path.startswith("tests/")))
        assert files == IN_ETL
        monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 100)
        everything, full_cost = self.cost(lambda: storage.read_path("flows/etl", head))
        assert isinstance(everything, dict) and set(everything) == {*IN_ETL, *(f"tests/t{i}.py" for i in range(9))}
        assert cost == full_cost - 9 * self.content_requests_per_file

    def test_listings_longer_than_a_page_are_read_to_the_end(self) -> None:
        paged = self.use_small_pages(2)
        files = {**{f"flows/wide/f{i:02}.txt": f"{i}\n".encode() for i in range(5)},
                 **{f"flows/wide/sub/g{i}.txt": f"g{i}\n".encode() for i in range(3)}}
        head = self.repo.commit(files)
        got, cost = self.cost(lambda: self.make_storage(path="flows/wide").read_path("flows/wide", head))
        assert got == {path.removeprefix("flows/wide/"): data for path, data in files.items()}
        if paged:  # at least one listing request per 2 entries, besides the file reads
            assert cost >= len(files) * self.content_requests_per_file + math.ceil(len(files) / 2)


class SymlinkConformance:
    """The symlink rules of read_path, for providers whose listings tell symlinks from files
    (every one but Bitbucket Data Center, whose browse API lists a link as the file it names:
    tests/backends/test_bitbucket.py says what it does instead). Mixed into those providers'
    conformance classes, beside GitHostedConformance."""

    repo: Any
    make_storage: Any

    def test_symlinks_to_files_inside_the_directory_are_read_as_those_files(self) -> None:
        links = {
            "flows/etl/current.sql": Symlink("lib/sql/query.sql"),
            "flows/etl/lib/main_again.py": Symlink("../main.py"),
            "flows/etl/alias.sql": Symlink("current.sql"),  # a link to a link
            "flows/etl/round_trip.py": Symlink("../etl/lib/./helpers.py"),  # leaves and comes back
        }
        head = self.repo.commit({**DIRECTORY, **links})
        files = self.make_storage(path="flows/etl").read_path("flows/etl", head)
        assert files == {**IN_ETL, "current.sql": b"select 1;\n", "lib/main_again.py": IN_ETL["main.py"],
                         "alias.sql": b"select 1;\n", "round_trip.py": IN_ETL["lib/helpers.py"]}

    @pytest.mark.parametrize("name, target, says", [
        ("data", "../../secrets", "points outside spec.source.path"),
        ("sibling.py", "../etl2/other.py", "points outside spec.source.path"),
        ("passwd", "/etc/passwd", "points outside spec.source.path"),
        ("gone.py", "missing.py", "dangling"),
        ("libdir", "lib", "names a directory"),
    ])
    def test_symlinks_that_leave_the_directory_are_refused(self, name: str, target: str, says: str) -> None:
        head = self.repo.commit({**DIRECTORY, f"flows/etl/{name}": Symlink(target)})
        with pytest.raises(InvalidConfig) as info:
            self.make_storage(path="flows/etl").read_path("flows/etl", head)
        assert f"symlink flows/etl/{name} -> {target} " in info.value.message
        assert says in info.value.message and not info.value.retryable
