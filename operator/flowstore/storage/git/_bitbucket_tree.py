"""Listing a directory of a Bitbucket repository at a commit, for
:meth:`flowstore.storage.git.bitbucket.Bitbucket.read_path`: Cloud's ``src`` listings and Data
Center's ``browse`` listings, walked directory by directory and page by page, as the
:class:`~flowstore.storage.git.tree.TreeEntry` values :func:`~flowstore.storage.git.tree.read_tree`
takes. The HTTP (URLs, auth, errors) stays in the storage: each function gets a `list_page`
callable answering one page of one directory's listing as decoded JSON."""

from __future__ import annotations

import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flowstore.storage.git.tree import DIRECTORY, FILE, SUBMODULE, SYMLINK, TreeEntry, relative_path

#: (directory, query parameters) -> one page of its listing
PageReader = Callable[[str, Mapping[str, str]], dict[str, Any]]

#: entries asked for per page: Cloud's `pagelen` (at most 100) and Data Center's `limit`
#: (servers cap it with their own page limits)
CLOUD_PAGE_LENGTH = 100
SERVER_PAGE_LIMIT = 1000


def cloud_entries(root: str, first: dict[str, Any], list_page: PageReader) -> Iterator[TreeEntry]:
    """Everything under `root`, from its first listing page (what ``src`` answered for it) on.
    Entries' keys are their repository paths."""
    # https://developer.atlassian.com/cloud/bitbucket/rest/api-group-source/#api-repositories-workspace-repo-slug-src-commit-path-get
    # A directory answers a paginated list of commit_directory and commit_file objects whose
    # `path` is the repository path; a commit_file has a `size` and `attributes`, which hold "link"
    # for a symlink and "subrepository" for a submodule. Walked directory by directory rather than
    # with `max_depth`: too deep a search times out (HTTP 555), too shallow a one leaves files out.
    queue: deque[tuple[str, dict[str, Any] | None]] = deque([(root, first)])
    while queue:
        directory, page = queue.popleft()
        if page is None:
            page = list_page(directory, {"pagelen": str(CLOUD_PAGE_LENGTH)})
        while True:
            for value in page.get("values") or []:
                if not isinstance(value, dict) or not isinstance(value.get("path"), str):
                    continue
                path = value["path"].strip("/")
                attributes = value.get("attributes") or []
                if value.get("type") == "commit_directory":
                    queue.append((path, None))
                    kind = DIRECTORY
                elif "subrepository" in attributes:
                    kind = SUBMODULE
                else:
                    kind = SYMLINK if "link" in attributes else FILE
                size = value.get("size")
                yield TreeEntry(relative_path(root, path), kind, path,
                                size if isinstance(size, int) and kind == FILE else None)
            # `next` is the next page's full URL: its query (the page token) is asked of the
            # storage's own API base, so a proxy in apiURL stays in the way and the credentials go
            # to no other host (https://developer.atlassian.com/cloud/bitbucket/rest/intro/#pagination)
            following = page.get("next")
            if not isinstance(following, str) or not following:
                break
            page = list_page(directory, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(following).query)))


def server_entries(root: str, list_page: PageReader) -> Iterator[TreeEntry]:
    """Everything under `root`. Files' keys are their repository paths, submodules' their commit."""
    # https://developer.atlassian.com/server/bitbucket/rest/v906/api-group-repository/#api-api-latest-projects-projectkey-repos-repositoryslug-browse-path-get
    # A directory answers {"children": a page of {path: {components, name, toString}, type: FILE |
    # DIRECTORY | SUBMODULE, contentId, size}}, paths relative to it, paged with `start` / `limit`,
    # `isLastPage` and `nextPageStart` (https://developer.atlassian.com/server/bitbucket/rest/v906/intro/#pagination).
    # There is no type for symlinks: they are listed, and read, as files holding their target path.
    queue = deque([""])
    while queue:
        relative = queue.popleft()
        start: object = 0
        while True:
            page = list_page(f"{root}/{relative}" if relative else root,
                             {"start": str(start), "limit": str(SERVER_PAGE_LIMIT)})
            children = page.get("children")
            children = children if isinstance(children, dict) else {}
            for value in children.get("values") or []:
                name = (value.get("path") or {}).get("toString") if isinstance(value, dict) else None
                if not isinstance(name, str) or not name.strip("/"):
                    continue
                child = f"{relative}/{name.strip('/')}" if relative else name.strip("/")
                kind = {"DIRECTORY": DIRECTORY, "SUBMODULE": SUBMODULE}.get(str(value.get("type")), FILE)
                if kind == DIRECTORY:
                    queue.append(child)
                size = value.get("size")
                key = str(value.get("contentId") or "") if kind == SUBMODULE else f"{root}/{child}"
                yield TreeEntry(child, kind, key, size if isinstance(size, int) and kind == FILE else None)
            start = children.get("nextPageStart")
            if children.get("isLastPage", True) or start is None:
                break
