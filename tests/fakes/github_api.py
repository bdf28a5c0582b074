"""A contract fake of the GitHub REST endpoints flowstore calls, serving real git repositories
(:class:`tests.gitrepo.LocalGitRepo`) by ``owner/name``: a repository, a commit, contents, and for
directories the git database's commit objects, trees and blobs; for verified sources a tag
reference and tag objects, and each commit and tag object's ``verification`` (the ``signature``
and the signed ``payload`` taken from the raw object git stores).

What it holds to, from the REST docs (https://docs.github.com/en/rest, API version 2022-11-28):

* auth: ``Authorization: Bearer <token>`` (or ``token <token>``); a wrong token is 401
  ``Bad credentials`` on every endpoint, public or not; without one, private repositories do not
  exist (404), exactly as for a token that cannot see them
  (https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api);
* ``X-GitHub-Api-Version``: an unsupported version is a 400
  (https://docs.github.com/en/rest/about-the-rest-api/api-versions);
* errors: ``{"message", "documentation_url", "status"}`` JSON;
* rate limits: every answer carries ``x-ratelimit-limit/-remaining/-used/-reset/-resource``;
  :meth:`GitHubAPI.rate_limit` makes the next requests answer 403 (or 429) with
  ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (epoch seconds), and
  :meth:`GitHubAPI.secondary_rate_limit` answers 403 with ``retry-after``
  (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api).
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time
import urllib.parse
import zlib
from typing import Any

from tests.fakes.base import FakeServer, Request, Response
from tests.helpers.gitrepo import LocalGitRepo

SUPPORTED_API_VERSIONS = frozenset({"2022-11-28", "2026-03-10"})
#: the contents API inlines base64 content for files up to 1 MB; larger ones need the raw type
INLINE_CONTENT_LIMIT = 1024 * 1024
#: a recursive tree lists at most this many entries, then says `truncated`
#: (https://docs.github.com/en/rest/git/trees#get-a-tree)
TREE_ENTRY_LIMIT = 100_000
_HEX = frozenset("0123456789abcdef")
DOCS = "https://docs.github.com/rest"


@dataclasses.dataclass
class _Repo:
    full_name: str
    git: LocalGitRepo
    private: bool
    #: authenticated requests answer 403 "Resource not accessible" (a token without access)
    denied: bool = False


@dataclasses.dataclass
class _Throttle:
    remaining: int
    status: int
    reset_at: int | None  # primary: x-ratelimit-reset epoch
    retry_after: int | None  # secondary: retry-after seconds


class GitHubAPI(FakeServer):
    """``GitHubAPI(token=...)``; :meth:`add_repo` serves a LocalGitRepo as ``owner/name``.
    The API base is ``fake.url`` (what :class:`~flowstore.storage.git.github.GitHub` takes as
    ``api_url``)."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._throttles: list[_Throttle] = []
        self._used = 0
        self._window_reset = int(time.time()) + 3600
        #: entries a recursive tree lists before it is truncated (lower it to test truncation)
        self.tree_entry_limit = TREE_ENTRY_LIMIT

    # ------------------------------------------------------------------ test controls
    def add_repo(self, full_name: str, repo: LocalGitRepo, *, private: bool = True) -> None:
        self._repos[full_name.lower()] = _Repo(full_name, repo, private)

    def deny(self, full_name: str) -> None:
        """Authenticated requests for `full_name` answer 403 ``Resource not accessible by
        personal access token`` (a fine-grained token without access), rate limit not hit."""
        self._repos[full_name.lower()].denied = True

    def rate_limit(self, next_n_requests: int, reset_in_seconds: int, *, status: int = 403) -> int:
        """The next `next_n_requests` requests exceed the primary rate limit: `status` (403 or
        429) with ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` `reset_in_seconds`
        from now. Returns that reset time (epoch seconds)."""
        reset_at = int(time.time()) + reset_in_seconds
        with self._lock:
            self._throttles.append(_Throttle(next_n_requests, status, reset_at, None))
        return reset_at

    def secondary_rate_limit(self, next_n_requests: int, retry_after: int, *, status: int = 403) -> None:
        """The next requests exceed a secondary rate limit: `status` with ``retry-after``."""
        with self._lock:
            self._throttles.append(_Throttle(next_n_requests, status, None, retry_after))

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: Request) -> Response:
        with self._lock:
            self._used += 1
            # a primary limit ends at its reset time, as GitHub's window does
            throttle = next((t for t in self._throttles if t.remaining > 0
                             and (t.reset_at is None or t.reset_at > time.time())), None)
            if throttle is not None:
                throttle.remaining -= 1
        authenticated, failure = self._authenticate(request)
        if failure is not None:
            return self._finish(failure, authenticated)
        if throttle is not None:
            return self._finish(self._throttled(throttle), authenticated, throttle)
        version = request.headers.get("x-github-api-version")
        if version is not None and version not in SUPPORTED_API_VERSIONS:
            return self._finish(
                _error(
                    400,
                    f"API version {version} is not supported.",
                    "https://docs.github.com/rest/about-the-rest-api/api-versions",
                ),
                authenticated,
            )
        return self._finish(self._route(request, authenticated), authenticated)

    def _authenticate(self, request: Request) -> tuple[bool, Response | None]:
        header = request.headers.get("authorization")
        if header is None:
            return False, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not value or value != self.token:
            return False, _error(401, "Bad credentials", DOCS)
        return True, None

    def _route(self, request: Request, authenticated: bool) -> Response:
        if request.method != "GET":
            return _error(404, "Not Found", DOCS)
        # routes are matched on the path as sent: owner and repo are single segments; the rest
        # (a ref with "/", a file path) is decoded after matching
        parts = request.raw_path.split("/")
        if len(parts) < 4 or parts[1] != "repos":
            return _error(404, "Not Found", DOCS)
        full_name = f"{urllib.parse.unquote(parts[2])}/{urllib.parse.unquote(parts[3])}"
        repo = self._repos.get(full_name.lower())
        if repo is None or (repo.private and not authenticated):
            return _error(404, "Not Found", "https://docs.github.com/rest/repos/repos#get-a-repository")
        if repo.denied and authenticated:
            return _error(
                403,
                "Resource not accessible by personal access token",
                "https://docs.github.com/rest/repos/repos#get-a-repository",
            )
        rest = parts[4:]
        if not rest:
            return self._get_repository(repo)
        if rest[0] == "commits" and len(rest) >= 2 and rest[1]:
            return self._get_commit(repo, urllib.parse.unquote("/".join(rest[1:])), request)
        if rest[0] == "contents":
            return self._get_contents(repo, urllib.parse.unquote("/".join(rest[1:])), request)
        if rest[:3] == ["git", "ref", "tags"] and len(rest) >= 4 and rest[3]:
            return self._get_tag_ref(repo, urllib.parse.unquote("/".join(rest[3:])))
        if rest[0] == "git" and len(rest) == 3 and rest[2]:
            name = urllib.parse.unquote(rest[2])
            if rest[1] == "commits":
                return self._get_commit_object(repo, name)
            if rest[1] == "tags":
                return self._get_tag_object(repo, name)
            if rest[1] == "trees":
                return self._get_tree(repo, name, request)
            if rest[1] == "blobs":
                return self._get_blob(repo, name, request)
        return _error(404, "Not Found", DOCS)

    # ------------------------------------------------------------------ endpoints
    def _get_repository(self, repo: _Repo) -> Response:
        # https://docs.github.com/en/rest/repos/repos#get-a-repository
        owner, name = repo.full_name.split("/")
        return Response.json(
            {
                "id": zlib.crc32(repo.full_name.lower().encode()),
                "name": name,
                "full_name": repo.full_name,
                "owner": {"login": owner, "type": "Organization"},
                "private": repo.private,
                "visibility": "private" if repo.private else "public",
                "html_url": f"https://github.com/{repo.full_name}",
                "default_branch": repo.git.default_branch(),
            }
        )

    def _get_commit(self, repo: _Repo, ref: str, request: Request) -> Response:
        # https://docs.github.com/en/rest/commits/commits#get-a-commit
        # ref: a sha, branch or tag name; "heads/x" and "tags/x" name them explicitly
        doc = "https://docs.github.com/rest/commits/commits#get-a-commit"
        if not repo.git.branches():
            return _error(409, "Git Repository is empty.", doc)
        commit = _resolve(repo.git, ref)
        if commit is None:
            return _error(422, f"No commit found for SHA: {ref}", doc)
        accept = request.headers.get("accept", "")
        if "application/vnd.github.sha" in accept:
            return Response(200, commit.encode(), {"Content-Type": "application/vnd.github.sha; charset=utf-8"})
        return Response.json(
            {
                "sha": commit,
                "url": f"{self.url}/repos/{repo.full_name}/commits/{commit}",
                "html_url": f"https://github.com/{repo.full_name}/commit/{commit}",
                "commit": {"message": repo.git.run("log", "-1", "--format=%B", commit).decode().strip()},
            }
        )

    def _get_contents(self, repo: _Repo, path: str, request: Request) -> Response:
        # https://docs.github.com/en/rest/repos/contents#get-repository-content
        doc = "https://docs.github.com/rest/repos/contents#get-repository-content"
        ref = request.arg("ref") or repo.git.default_branch()
        commit = _resolve(repo.git, ref)
        if commit is None:
            return _error(404, f"No commit found for the ref {ref}", doc)
        path = path.strip("/")
        accept = request.headers.get("accept", "")
        raw = "application/vnd.github.raw" in accept  # vnd.github.raw or vnd.github.raw+json
        data = repo.git.show(commit, path) if path else None
        if data is None:
            listing = _listing(repo.git, commit, path)
            if listing is None:
                return _error(404, "Not Found", doc)
            return Response.json(listing)  # a directory answers its listing, whatever the media type
        if raw:
            return Response(200, data, {"Content-Type": "application/vnd.github.raw+json; charset=utf-8"})
        inline = len(data) <= INLINE_CONTENT_LIMIT
        return Response.json(
            {
                "type": "file",
                "name": path.rsplit("/", 1)[-1],
                "path": path,
                "sha": repo.git.blob_id(commit, path),
                "size": len(data),
                "encoding": "base64" if inline else "none",
                "content": base64.encodebytes(data).decode() if inline else "",
            }
        )

    def _get_commit_object(self, repo: _Repo, sha: str) -> Response:
        # https://docs.github.com/en/rest/git/commits#get-a-commit-object (commit_sha: a commit's SHA)
        doc = "https://docs.github.com/rest/git/commits#get-a-commit-object"
        if not _is_sha(sha) or repo.git.object_type(sha) != "commit":
            return _error(404, "Not Found", doc)
        commit = repo.git.resolve(sha) or sha
        tree = repo.git.run("rev-parse", f"{commit}^{{tree}}").decode().strip()
        parents = repo.git.run("log", "-1", "--format=%P", commit).decode().split()
        base = f"{self.url}/repos/{repo.full_name}/git"
        return Response.json(
            {
                "sha": commit,
                "url": f"{base}/commits/{commit}",
                "html_url": f"https://github.com/{repo.full_name}/commit/{commit}",
                "tree": {"sha": tree, "url": f"{base}/trees/{tree}"},
                "parents": [{"sha": p, "url": f"{base}/commits/{p}"} for p in parents],
                "message": repo.git.run("log", "-1", "--format=%B", commit).decode(),
                "verification": _verification("commit", repo.git.raw(commit)[1]),
            }
        )

    def _get_tag_ref(self, repo: _Repo, name: str) -> Response:
        # https://docs.github.com/en/rest/git/refs#get-a-reference ({ref} = tags/<name>): the object
        # the ref names, a tag object for an annotated tag, the commit for a lightweight one
        doc = "https://docs.github.com/rest/git/refs#get-a-reference"
        done = repo.git.run("for-each-ref", "--format=%(objectname) %(objecttype)", f"refs/tags/{name}").decode()
        if not done.strip():
            return _error(404, "Not Found", doc)
        sha, kind = done.split()[:2]
        base = f"{self.url}/repos/{repo.full_name}/git"
        return Response.json({"ref": f"refs/tags/{name}", "url": f"{base}/refs/tags/{name}",
                              "object": {"type": kind, "sha": sha, "url": f"{base}/{kind}s/{sha}"}})

    def _get_tag_object(self, repo: _Repo, sha: str) -> Response:
        # https://docs.github.com/en/rest/git/tags#get-a-tag (tag_sha: an annotated tag object)
        doc = "https://docs.github.com/rest/git/tags#get-a-tag"
        if not _is_sha(sha) or repo.git.object_type(sha) != "tag":
            return _error(404, "Not Found", doc)
        raw = repo.git.raw(sha)[1]
        head, _, _ = raw.partition(b"\n\n")
        fields = dict(line.split(b" ", 1) for line in head.split(b"\n") if b" " in line)
        base = f"{self.url}/repos/{repo.full_name}/git"
        kind, target = fields[b"type"].decode(), fields[b"object"].decode()
        return Response.json({
            "sha": sha, "url": f"{base}/tags/{sha}", "tag": fields[b"tag"].decode(),
            "message": repo.git.run("tag", "-l", "--format=%(contents)", fields[b"tag"].decode()).decode(),
            "object": {"type": kind, "sha": target, "url": f"{base}/{kind}s/{target}"},
            "verification": _verification("tag", raw),
        })

    def _get_tree(self, repo: _Repo, tree_sha: str, request: Request) -> Response:
        # https://docs.github.com/en/rest/git/trees#get-a-tree: tree_sha is "the SHA1 value or ref
        # (branch or tag) name of the tree"; `recursive` set to any value lists the subtrees too,
        # up to 100,000 entries, then `truncated` is true
        doc = "https://docs.github.com/rest/git/trees#get-a-tree"
        if _is_sha(tree_sha):
            tree = tree_sha if repo.git.object_type(tree_sha) == "tree" else None
        else:
            commit = _resolve(repo.git, tree_sha)
            tree = repo.git.run("rev-parse", f"{commit}^{{tree}}").decode().strip() if commit else None
        lines = repo.git.ls_tree(tree, recursive="recursive" in request.query) if tree else None
        if tree is None or lines is None:
            return _error(404, "Not Found", doc)
        tree = repo.git.run("rev-parse", tree).decode().strip()
        base = f"{self.url}/repos/{repo.full_name}/git"
        entries = []
        for line in lines[: self.tree_entry_limit]:
            entry: dict[str, Any] = {"path": line.path, "mode": line.mode, "type": line.type, "sha": line.id}
            if line.type == "blob":
                entry["size"] = line.size
                entry["url"] = f"{base}/blobs/{line.id}"
            elif line.type == "tree":
                entry["url"] = f"{base}/trees/{line.id}"
            entries.append(entry)
        return Response.json(
            {"sha": tree, "url": f"{base}/trees/{tree}", "tree": entries,
             "truncated": len(lines) > self.tree_entry_limit}
        )

    def _get_blob(self, repo: _Repo, file_sha: str, request: Request) -> Response:
        # https://docs.github.com/en/rest/git/blobs#get-a-blob: base64 JSON, or the raw bytes with
        # the raw media type
        doc = "https://docs.github.com/rest/git/blobs#get-a-blob"
        if not _is_sha(file_sha) or repo.git.object_type(file_sha) != "blob":
            return _error(404, "Not Found", doc)
        data = repo.git.run("cat-file", "blob", file_sha)
        if "application/vnd.github.raw" in request.headers.get("accept", ""):
            return Response(200, data, {"Content-Type": "application/vnd.github.raw+json; charset=utf-8"})
        return Response.json(
            {
                "sha": file_sha,
                "size": len(data),
                "url": f"{self.url}/repos/{repo.full_name}/git/blobs/{file_sha}",
                "content": base64.encodebytes(data).decode(),
                "encoding": "base64",
            }
        )

    # ------------------------------------------------------------------ responses
    def _throttled(self, throttle: _Throttle) -> Response:
        if throttle.retry_after is not None:
            response = _error(
                throttle.status,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                "https://docs.github.com/rest/using-the-rest-api/"
                "rate-limits-for-the-rest-api#about-secondary-rate-limits",
            )
            response.headers["retry-after"] = str(throttle.retry_after)
            return response
        return _error(
            throttle.status,
            "API rate limit exceeded for user ID 1.",
            "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api",
        )

    def _finish(self, response: Response, authenticated: bool, throttle: _Throttle | None = None) -> Response:
        limit = 5000 if authenticated else 60
        with self._lock:
            used = min(self._used, limit)
        remaining = limit - used
        reset = self._window_reset
        if throttle is not None and throttle.reset_at is not None:
            remaining, used, reset = 0, limit, throttle.reset_at
        response.headers.update(
            {
                "x-ratelimit-limit": str(limit),
                "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-used": str(used),
                "x-ratelimit-reset": str(reset),
                "x-ratelimit-resource": "core",
                "x-github-api-version-selected": "2022-11-28",
            }
        )
        return response


def _verification(kind: str, raw: bytes) -> dict[str, Any]:
    """The ``verification`` object of a git database answer, from the object as git stores it:
    ``signature`` (what was extracted) and ``payload`` (the object without it: the value that was
    signed). GitHub says ``verified: true`` for a good signature by a key *some* GitHub account
    has uploaded; this fake says so for every signed object, which is why flowstore must never
    believe it (https://docs.github.com/en/rest/git/commits#signature-verification-object)."""
    payload, signature = _split_signature(kind, raw)
    if signature is None:
        return {"verified": False, "reason": "unsigned", "signature": None, "payload": None, "verified_at": None}
    return {"verified": True, "reason": "valid", "signature": signature, "payload": payload,
            "verified_at": "2026-01-01T00:00:00Z"}


def _split_signature(kind: str, raw: bytes) -> tuple[str, str | None]:
    text = raw.decode("utf-8")
    if kind == "tag":  # the signature follows the message
        at = min((i for i in (text.find("-----BEGIN PGP SIGNATURE-----"), text.find("-----BEGIN SSH SIGNATURE-----"))
                  if i >= 0), default=-1)
        return (text, None) if at < 0 else (text[:at], text[at:])
    head, sep, message = text.partition("\n\n")
    lines, signature, inside = [], [], False
    for line in head.split("\n"):
        if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
            inside = True
            signature.append(line.split(" ", 1)[1])
        elif inside and line.startswith(" "):
            signature.append(line[1:])
        else:
            inside = False
            lines.append(line)
    if not signature:
        return text, None
    return "\n".join(lines) + sep + message, "\n".join(signature) + "\n"


def _error(status: int, message: str, documentation_url: str) -> Response:
    return Response.json(
        {"message": message, "documentation_url": documentation_url, "status": str(status)}, status=status
    )


def _resolve(git: LocalGitRepo, ref: str) -> str | None:
    """What GitHub accepts as a ref: a sha (full or abbreviated), a branch, a tag, or
    ``heads/<branch>`` / ``tags/<tag>`` / ``refs/...``."""
    if not ref or ref.startswith("-") or ".." in ref:
        return None
    if ref.startswith(("heads/", "tags/")):
        ref = f"refs/{ref}"
    return git.resolve(ref)


def _is_sha(name: str) -> bool:
    return 4 <= len(name) <= 40 and set(name.lower()) <= _HEX


def _listing(git: LocalGitRepo, commit: str, path: str) -> list[dict[str, Any]] | None:
    """The contents API's directory listing, or None when `path` is no directory. Symlinks are
    "symlink"; submodules are "file", as the docs say the listing calls them."""
    lines = git.ls_tree(f"{commit}:{path}" if path else f"{commit}:")
    if lines is None:
        return None
    kinds = {"040000": "dir", "120000": "symlink"}
    return [
        {
            "type": kinds.get(line.mode, "file"),
            "name": line.path,
            "path": f"{path}/{line.path}" if path else line.path,
            "sha": line.id,
            "size": line.size or 0,
        }
        for line in lines
    ]
