"""Reading a directory of a git repository at a commit: the rules every git-hosted provider
shares, written once.

A provider lists the directory as :class:`TreeEntry` values (lazily: a generator that asks for
the next page only when the previous one is used up) and says how to read one entry's bytes;
:func:`read_tree` then

* counts the files while the listing arrives and refuses the directory as soon as it passes
  :data:`~flowstore.storage.git.base.MAX_DIRECTORY_FILES` files, or
  :data:`~flowstore.storage.git.base.MAX_DIRECTORY_BYTES` bytes where the listing gives sizes,
  so a huge directory costs its listing up to the bound and no file reads;
* refuses submodules (git mode 160000: a commit of another repository, whose files are not here);
* resolves symlinks (git mode 120000: a blob whose content is the target path) the way a
  checkout would, lexically from the link's directory: a link to a file inside the directory is
  returned as that file's bytes under the link's path; a link that leaves the directory, is
  absolute, dangles, names a directory or loops is refused, naming the link and its target;
* reads the files, adding up their bytes, and refuses the directory as soon as the sum passes
  the byte bound (providers whose listings carry no sizes find out while reading).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Iterable

from flowstore.storage.errors import InvalidConfig, StorageError
from flowstore.storage.git import base as git_base

FILE = "file"
SYMLINK = "symlink"
DIRECTORY = "directory"
SUBMODULE = "submodule"

#: git's tree entry modes (https://git-scm.com/book/en/v2/Git-Internals-Git-Objects#_tree_objects;
#: GitHub and GitLab listings spell directories "040000", git itself "40000")
_MODE_KINDS = {"100644": FILE, "100755": FILE, "100664": FILE, "120000": SYMLINK,
               "040000": DIRECTORY, "40000": DIRECTORY, "160000": SUBMODULE}
#: links followed one after another before a chain is taken for a loop (Linux's MAXSYMLINKS)
MAX_SYMLINK_HOPS = 40
#: the longest symlink target accepted (PATH_MAX); a longer "link" is no path
MAX_LINK_TARGET_BYTES = 4096
#: entries (ignored ones included) listed before a directory is refused whatever `keep` says:
#: the listing itself must stay bounded
LISTING_FACTOR = 10

_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TreeEntry:
    """One entry under the directory being read.

    Attributes:
        path: relative to the directory, POSIX (``lib/helpers.py``).
        kind: :data:`FILE`, :data:`SYMLINK`, :data:`DIRECTORY` or :data:`SUBMODULE`.
        key: what the provider reads the entry by (a blob id, a repository path); entries with
            the same key are read once.
        size: the blob's size in bytes, when the listing says.
    """

    path: str
    kind: str
    key: str = ""
    size: int | None = None


def kind_of_mode(mode: str) -> str:
    """The entry kind of a git mode (``100644``, ``120000``, …); unknown modes of blobs are files."""
    return _MODE_KINDS.get(mode.strip(), FILE)


def relative_path(root: str, path: str) -> str:
    """`path` (a repository path, as most listings give it) relative to the directory `root`."""
    path = path.strip("/")
    if not path.startswith(root + "/") or len(path) == len(root) + 1:
        raise StorageError(f"the provider listed {path!r} as part of {root!r}, which it is not")
    return path[len(root) + 1:]


def read_tree(root: str, commit: str, entries: Iterable[TreeEntry], read: Callable[[TreeEntry], bytes], *,
              keep: Callable[[str], bool] | None = None) -> dict[str, bytes]:
    """Every file under the directory `root` (a normalised repository path) at `commit`, as
    {relative path: bytes} sorted by path, from the provider's lazy listing `entries` and its
    reader `read` (called once per file, and once per symlink for its target). See the module
    docstring for the rules; raises InvalidConfig when one is broken, and whatever `entries` or
    `read` raise."""
    bounds = _Bounds(root, commit)
    listing: dict[str, TreeEntry] = {}
    wanted: list[TreeEntry] = []
    for raw in entries:
        entry = dataclasses.replace(raw, path=_clean(root, raw.path))
        listing[entry.path] = entry
        if entry.kind == DIRECTORY:
            continue
        bounds.listed()
        if keep is not None and not keep(entry.path):
            continue
        if entry.kind == SUBMODULE:
            raise InvalidConfig(
                f"{root}/{entry.path} is a git submodule (another repository's commit {entry.key[:12] or '?'}), "
                f"whose files are not in this repository: flowstore does not read submodules; copy the files into "
                f"spec.source.path {root!r}, or exclude the submodule with spec.source.ignore")
        wanted.append(entry)
        bounds.count(entry)
    wanted.sort(key=lambda e: e.path)
    links = _Links(root, listing, read)
    sources = {entry.path: links.resolve(entry.path) if entry.kind == SYMLINK else entry.path for entry in wanted}
    contents: dict[str, bytes] = {}  # by key: equal blob ids (empty __init__.py files) are read once
    files: dict[str, bytes] = {}
    for entry in wanted:
        source = listing[sources[entry.path]]
        key = source.key or source.path
        if key not in contents:
            contents[key] = read(source)
        files[entry.path] = contents[key]
        bounds.add(len(contents[key]))
    return files


def _clean(root: str, path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"the provider listed {path!r} under {root!r}: not a path inside the directory")
    return path


def _size(n: int) -> str:
    if n >= _MIB:
        return f"{n / _MIB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


class _Bounds:
    """The file count and byte sum of one directory read, checked as they grow."""

    def __init__(self, root: str, commit: str) -> None:
        # read at call time: tests (and the bundle code) see the module's current values
        self.max_files = git_base.MAX_DIRECTORY_FILES
        self.max_bytes = git_base.MAX_DIRECTORY_BYTES
        self.where = f"spec.source.path {root!r} at commit {commit[:12]}"
        self.entries = 0
        self.files = 0
        self.listed_bytes = 0
        self.read_bytes = 0

    def _advice(self) -> str:
        return (f"flowstore reads at most {self.max_files} files and {_size(self.max_bytes)} from a directory: "
                "exclude files with spec.source.ignore, or point spec.source.path at a smaller directory")

    def listed(self) -> None:
        self.entries += 1
        if self.entries > LISTING_FACTOR * self.max_files:
            raise InvalidConfig(f"{self.where} holds more than {LISTING_FACTOR * self.max_files} files, ignored "
                                f"ones included (the listing stopped there); {self._advice()}")

    def count(self, entry: TreeEntry) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise InvalidConfig(f"{self.where} holds more than {self.max_files} files ({self.files} listed so far, "
                                f"then the listing stopped); {self._advice()}")
        if entry.kind == FILE and entry.size is not None:
            self.listed_bytes += entry.size
            if self.listed_bytes > self.max_bytes:
                raise InvalidConfig(f"{self.where} holds more than {_size(self.max_bytes)} "
                                    f"({_size(self.listed_bytes)} listed so far, nothing read); {self._advice()}")

    def add(self, size: int) -> None:
        self.read_bytes += size
        if self.read_bytes > self.max_bytes:
            raise InvalidConfig(f"{self.where} holds more than {_size(self.max_bytes)} "
                                f"({_size(self.read_bytes)} read so far, then reading stopped); {self._advice()}")


class _Links:
    """Symlink resolution inside one directory listing."""

    def __init__(self, root: str, listing: dict[str, TreeEntry], read: Callable[[TreeEntry], bytes]) -> None:
        self.root = root
        self.listing = listing
        self.read = read
        self.targets: dict[str, str] = {}

    def target(self, path: str) -> str:
        if path not in self.targets:
            entry = self.listing[path]
            data = b"" if entry.size is not None and entry.size > MAX_LINK_TARGET_BYTES else self.read(entry)
            if not data or len(data) > MAX_LINK_TARGET_BYTES or b"\0" in data:
                raise InvalidConfig(f"symlink {self.root}/{path} does not hold a usable target path "
                                    f"({_size(entry.size if entry.size is not None else len(data))}); "
                                    "replace it with the file it should name")
            self.targets[path] = data.decode("utf-8", "surrogateescape")
        return self.targets[path]

    def _is_directory(self, path: str) -> bool:
        entry = self.listing.get(path)
        if entry is not None:
            return entry.kind == DIRECTORY
        return path == "." or any(p.startswith(path + "/") for p in self.listing)

    def resolve(self, link: str) -> str:
        """The relative path of the file `link` leads to, through any chain of links."""
        current = link
        for _ in range(MAX_SYMLINK_HOPS):
            target = self.target(current)
            shown = f"symlink {self.root}/{current} -> {target}"
            if current != link:
                shown += f" (followed from {self.root}/{link})"
            # resolved in the repository, so "../etl/x.py" from inside etl/ stays inside etl/
            full = posixpath.normpath(posixpath.join(self.root, posixpath.dirname(current), target))
            if target.startswith("/") or not (full + "/").startswith(self.root + "/"):
                raise InvalidConfig(f"{shown} points outside spec.source.path {self.root!r}: flowstore reads only "
                                    "the files under it; commit the file itself there, or remove the link")
            joined = full[len(self.root) + 1:] or "."
            entry = self.listing.get(joined)
            if entry is not None and entry.kind == FILE:
                return joined
            if entry is not None and entry.kind == SYMLINK:
                current = joined
                continue
            if self._is_directory(joined):
                raise InvalidConfig(f"{shown} names a directory; flowstore follows links to files only: link the "
                                    "files themselves, or remove the link")
            if entry is not None and entry.kind == SUBMODULE:
                raise InvalidConfig(f"{shown} names a git submodule, which flowstore does not read")
            raise InvalidConfig(f"{shown} names nothing in spec.source.path {self.root!r} (a dangling link): commit "
                                "its target there, or remove the link")
        raise InvalidConfig(f"symlink {self.root}/{link} leads through more than {MAX_SYMLINK_HOPS} links (a loop?): "
                            "point it at a file")
