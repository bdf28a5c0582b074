"""Git's smart HTTP protocol, as the providers serve it next to their REST APIs, for the contract
fakes: clone and fetch (never push) of a fake's real git repository, through Debian's
``git http-backend`` — so the commits and tags a fake serves over git are byte for byte the ones
its REST endpoints describe.

https://git-scm.com/docs/http-protocol (the smart protocol: ``GET …/info/refs?service=
git-upload-pack``, then ``POST …/git-upload-pack``), https://git-scm.com/docs/git-http-backend
"""

from __future__ import annotations

import base64

from tests.fakes.base import Request, Response
from tests.helpers.git_server import http_backend
from tests.helpers.gitrepo import LocalGitRepo

#: what a fetch asks for after the repository's path
UPLOAD_PACK_SUFFIXES = ("/info/refs", "/git-upload-pack")


def is_git_request(rest: str) -> bool:
    """Whether `rest` (the path after the repository) is a smart-HTTP fetch request."""
    return rest in UPLOAD_PACK_SUFFIXES


def serve_git(repo: LocalGitRepo, request: Request, rest: str) -> Response:
    """Answer one smart-HTTP fetch request for `repo`; `rest` is ``/info/refs`` or
    ``/git-upload-pack``. Pushes (``git-receive-pack``) are refused as the providers refuse a
    read-only token."""
    if not is_git_request(rest) or "receive-pack" in "".join(request.query.get("service", [])):
        return Response(403, b"fetch only\n", {"Content-Type": "text/plain"})
    query = "&".join(f"{k}={v}" for k, values in request.query.items() for v in values)
    status, headers, body = http_backend(repo.bare.parent, request.method, f"/{repo.bare.name}{rest}", query,
                                         request.headers, request.body)
    return Response(status, body, headers)


def basic_auth(request: Request) -> tuple[str, str] | None:
    """The (user, password) of a request's ``Authorization: Basic`` header, or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def challenge(realm: str) -> Response:
    """401 with ``WWW-Authenticate: Basic``: what makes git send its credentials."""
    return Response(401, b"Authentication required\n", {"WWW-Authenticate": f'Basic realm="{realm}"',
                                                         "Content-Type": "text/plain"})
