"""The directory-reading rules every git-hosted provider shares (flowstore.storage.git.tree), on
listings written by hand: bounds, symlinks, submodules, `keep`; and the Bitbucket listing walks
(flowstore.storage.git._bitbucket_tree) on hand-written pages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from flowstore.storage.errors import InvalidConfig, StorageError
from flowstore.storage.git import base as git_base
from flowstore.storage.git._bitbucket_tree import cloud_entries, server_entries
from flowstore.storage.git.tree import (
    DIRECTORY,
    FILE,
    MAX_SYMLINK_HOPS,
    SUBMODULE,
    SYMLINK,
    TreeEntry,
    kind_of_mode,
    read_tree,
    relative_path,
)

COMMIT = "c0ffee" * 6 + "abcd"


class Repo:
    """A directory listing and its contents; counts what was listed and read."""

    def __init__(self, files: Mapping[str, bytes | tuple[str, str]]) -> None:
        # path -> bytes (a file), ("link", target) or ("submodule", commit); directories implied
        self.files = dict(files)
        self.listed = 0
        self.reads: list[str] = []

    def entries(self, *, sizes: bool = True) -> Iterator[TreeEntry]:
        directories = sorted({p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)})
        for directory in directories:
            self.listed += 1
            yield TreeEntry(directory, DIRECTORY, f"tree:{directory}")
        for path, value in sorted(self.files.items()):
            self.listed += 1
            if isinstance(value, bytes):
                yield TreeEntry(path, FILE, f"blob:{path}", len(value) if sizes else None)
            elif value[0] == "link":
                yield TreeEntry(path, SYMLINK, f"blob:{path}", len(value[1]) if sizes else None)
            else:
                yield TreeEntry(path, SUBMODULE, value[1])

    def read(self, entry: TreeEntry) -> bytes:
        self.reads.append(entry.path)
        value = self.files[entry.path]
        return value if isinstance(value, bytes) else value[1].encode()

    def tree(self, **kwargs: Any) -> dict[str, bytes]:
        return read_tree("flows/etl", COMMIT, self.entries(), self.read, **kwargs)


def link(target: str) -> tuple[str, str]:
    return ("link", target)


def test_files_come_back_sorted_with_their_bytes() -> None:
    repo = Repo({"b.py": b"b", "a/z.sql": b"\0\xff", "a/b.py": b"ab"})
    files = repo.tree()
    assert files == {"a/b.py": b"ab", "a/z.sql": b"\0\xff", "b.py": b"b"}
    assert list(files) == ["a/b.py", "a/z.sql", "b.py"]


def test_equal_keys_are_read_once() -> None:
    entries = [TreeEntry("a/__init__.py", FILE, "e69de29"), TreeEntry("b/__init__.py", FILE, "e69de29")]
    reads: list[str] = []
    files = read_tree("flows", COMMIT, entries, lambda e: reads.append(e.path) or b"")
    assert files == {"a/__init__.py": b"", "b/__init__.py": b""} and reads == ["a/__init__.py"]


@pytest.mark.parametrize("at, target", [
    ("link.py", "main.py"),
    ("link.py", "alias.py"),  # a link to a link
    ("lib/link.py", "../main.py"),
    ("lib/link.py", "./../lib/../main.py"),
    ("lib/link.py", "../../etl/main.py"),  # leaves the directory and comes back
])
def test_links_to_files_inside_are_read_as_those_files(at: str, target: str) -> None:
    repo = Repo({"main.py": b"main", "alias.py": link("main.py"), "lib/x.py": b"x", at: link(target)})
    assert repo.tree()[at] == b"main"


@pytest.mark.parametrize("target, says", [
    ("../../secrets", "points outside spec.source.path 'flows/etl'"),
    ("../../../../../etc/passwd", "points outside"),
    ("/etc/passwd", "points outside"),
    ("../etl2/x.py", "points outside"),
    ("..", "points outside"),
    (".", "names a directory"),
    ("lib", "names a directory"),
    ("lib/", "names a directory"),
    ("nope.py", "dangling"),
    ("lib/x.py/y", "dangling"),
])
def test_links_that_leave_or_miss_are_refused_naming_link_and_target(target: str, says: str) -> None:
    repo = Repo({"main.py": b"main", "lib/x.py": b"x", "data": link(target)})
    with pytest.raises(InvalidConfig) as info:
        repo.tree()
    assert f"symlink flows/etl/data -> {target} " in info.value.message and says in info.value.message
    assert repo.reads == ["data"]  # refused before any file was read


def test_a_chain_that_leaves_names_where_it_leaves() -> None:
    repo = Repo({"a": link("b"), "b": link("../../x")})
    with pytest.raises(InvalidConfig) as info:
        repo.tree()
    assert "symlink flows/etl/b -> ../../x (followed from flows/etl/a) points outside" in info.value.message


def test_a_loop_is_refused() -> None:
    repo = Repo({"a": link("b"), "b": link("a")})
    with pytest.raises(InvalidConfig, match=f"more than {MAX_SYMLINK_HOPS} links"):
        repo.tree()


def test_a_link_without_a_usable_target_is_refused() -> None:
    with pytest.raises(InvalidConfig, match="usable target"):
        Repo({"a": link("")}).tree()
    with pytest.raises(InvalidConfig, match="usable target"):
        read_tree("d", COMMIT, [TreeEntry("a", SYMLINK, "k", 10_000)], lambda e: pytest.fail("read a huge link"))


def test_submodules_are_refused_unless_left_out() -> None:
    repo = Repo({"main.py": b"m", "vendor/lib": ("submodule", "1234567890abcdef")})
    with pytest.raises(InvalidConfig) as info:
        repo.tree()
    assert "flows/etl/vendor/lib is a git submodule" in info.value.message and "1234567890ab" in info.value.message
    assert repo.reads == []
    assert Repo(repo.files).tree(keep=lambda p: not p.startswith("vendor/")) == {"main.py": b"m"}
    with pytest.raises(InvalidConfig, match="names a git submodule"):
        Repo({"vendor": ("submodule", "1" * 40), "v": link("vendor")}).tree(keep=lambda p: p != "vendor")


def test_too_many_files_stop_the_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 3)
    repo = Repo({f"f{i}.py": b"x" for i in range(10)})
    with pytest.raises(InvalidConfig) as info:
        repo.tree()
    assert "more than 3 files (4 listed so far" in info.value.message
    assert "spec.source.ignore" in info.value.message and "smaller directory" in info.value.message
    assert repo.listed == 4 and repo.reads == []
    # links count as files; directories do not
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 2)
    assert Repo({"a/b/c/x.py": b"x", "a/l": link("b/c/x.py")}).tree() == {"a/b/c/x.py": b"x", "a/l": b"x"}
    with pytest.raises(InvalidConfig, match="more than 2 files"):
        Repo({"x.py": b"x", "l1": link("x.py"), "l2": link("x.py")}).tree()


def test_keep_leaves_files_uncounted_and_unread_but_the_listing_stays_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_FILES", 2)
    repo = Repo({"a.py": b"a", "b.py": b"b", **{f"tests/t{i}.py": b"t" for i in range(5)}, "l": link("tests/t0.py")})
    assert repo.tree(keep=lambda p: not p.startswith("tests/") and p != "b.py") == {"a.py": b"a", "l": b"t"}
    assert sorted(repo.reads) == ["a.py", "l", "tests/t0.py"]  # an ignored target is still a link's bytes
    huge = Repo({f"tests/t{i}.py": b"t" for i in range(25)})
    with pytest.raises(InvalidConfig, match="more than 20 files, ignored ones included"):
        huge.tree(keep=lambda p: False)
    assert huge.listed <= 25 and huge.reads == []


def test_too_many_bytes_listed_are_refused_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_BYTES", 100)
    repo = Repo({"a": b"a" * 60, "b": b"b" * 60, "c": b"c"})
    with pytest.raises(InvalidConfig) as info:
        repo.tree()
    assert "more than 100 bytes (120 bytes listed so far, nothing read)" in info.value.message
    assert repo.reads == []


def test_too_many_bytes_read_stop_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_BYTES", 100)
    repo = Repo({"a": b"a" * 60, "b": b"b" * 60, "c": b"c"})
    with pytest.raises(InvalidConfig) as info:
        read_tree("flows/etl", COMMIT, repo.entries(sizes=False), repo.read)
    assert "more than 100 bytes (120 bytes read so far, then reading stopped)" in info.value.message
    assert repo.reads == ["a", "b"]
    # a link's bytes count as often as the link appears (the bundle holds them twice)
    with pytest.raises(InvalidConfig, match="read so far"):
        Repo({"a": b"a" * 60, "l": link("a")}).tree()
    monkeypatch.setattr(git_base, "MAX_DIRECTORY_BYTES", 32 * 1024 * 1024)
    with pytest.raises(InvalidConfig, match=r"more than 32.0 MiB \(40.0 MiB listed"):
        read_tree("d", COMMIT, [TreeEntry("big", FILE, "k", 40 * 1024 * 1024)], lambda e: b"")


def test_listings_naming_paths_outside_are_provider_errors() -> None:
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b"):
        with pytest.raises(StorageError):
            read_tree("d", COMMIT, [TreeEntry(bad, FILE, "k")], lambda e: b"")


def test_modes_and_paths() -> None:
    assert [kind_of_mode(m) for m in ("100644", "100755", "120000", "040000", "40000", "160000")] == [
        FILE, FILE, SYMLINK, DIRECTORY, DIRECTORY, SUBMODULE]
    assert relative_path("flows/etl", "/flows/etl/lib/a.py") == "lib/a.py"
    for bad in ("flows/etl", "flows/etl2/a.py", "flows/etl/"):
        with pytest.raises(StorageError):
            relative_path("flows/etl", bad)


# ---------------------------------------------------------------------- Bitbucket listings
def test_cloud_walk_follows_next_pages_and_directories_and_reads_attributes() -> None:
    pages: dict[tuple[str, str], dict[str, Any]] = {
        ("flows/etl", "2"): {"values": [
            {"type": "commit_file", "path": "flows/etl/link", "attributes": ["link"], "size": 7},
            {"type": "commit_file", "path": "flows/etl/vendor", "attributes": ["subrepository"]}]},
        ("flows/etl/lib", ""): {"values": [
            {"type": "commit_file", "path": "flows/etl/lib/a.py", "attributes": ["executable"], "size": 3}]},
    }
    asked: list[tuple[str, Mapping[str, str]]] = []

    def list_page(directory: str, params: Mapping[str, str]) -> dict[str, Any]:
        asked.append((directory, params))
        return pages[(directory, params.get("page", ""))]

    first = {"values": [{"type": "commit_directory", "path": "flows/etl/lib"},
                        {"type": "commit_file", "path": "flows/etl/main.py", "attributes": [], "size": 5}],
             "next": "https://elsewhere.example/2.0/repositories/w/r/src/abc/flows/etl?page=2&pagelen=10"}
    entries = list(cloud_entries("flows/etl", first, list_page))
    assert entries == [
        TreeEntry("lib", DIRECTORY, "flows/etl/lib"), TreeEntry("main.py", FILE, "flows/etl/main.py", 5),
        TreeEntry("link", SYMLINK, "flows/etl/link"), TreeEntry("vendor", SUBMODULE, "flows/etl/vendor"),
        TreeEntry("lib/a.py", FILE, "flows/etl/lib/a.py", 3)]
    # only the next link's query is used: the storage asks its own API base
    assert asked == [("flows/etl", {"page": "2", "pagelen": "10"}), ("flows/etl/lib", {"pagelen": "100"})]


def test_server_walk_pages_with_start_and_names_children_relative() -> None:
    def node(name: str, kind: str, size: int | None = None, content: str = "") -> dict[str, Any]:
        doc: dict[str, Any] = {"path": {"toString": name}, "type": kind, "contentId": content}
        return {**doc, "size": size} if size is not None else doc

    pages = {
        ("flows/etl", "0"): {"children": {"values": [node("a.py", "FILE", 1), node("lib/sql", "DIRECTORY")],
                                          "isLastPage": False, "nextPageStart": 2}},
        ("flows/etl", "2"): {"children": {"values": [node("vendor", "SUBMODULE", content="c" * 40)],
                                          "isLastPage": True}},
        ("flows/etl/lib/sql", "0"): {"children": {"values": [node("q.sql", "FILE", 9)], "isLastPage": True}},
    }
    entries = list(server_entries("flows/etl", lambda d, params: pages[(d, params["start"])]))
    assert entries == [
        TreeEntry("a.py", FILE, "flows/etl/a.py", 1), TreeEntry("lib/sql", DIRECTORY, "flows/etl/lib/sql"),
        TreeEntry("vendor", SUBMODULE, "c" * 40), TreeEntry("lib/sql/q.sql", FILE, "flows/etl/lib/sql/q.sql", 9)]
