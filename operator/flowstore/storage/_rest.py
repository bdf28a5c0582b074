"""What the REST-based git providers (GitHub, GitLab) share: GET with retries, token checks,
host parsing, path quoting and error-message extraction. Each function takes the provider's
name for its messages; none knows a provider's endpoints."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from flowstore.storage.errors import InvalidConfig, StorageError, Unavailable

if TYPE_CHECKING:
    import requests

#: (connect, read) seconds per request
TIMEOUT: tuple[float, float] = (5.0, 60.0)
#: tries per request on connection errors, timeouts and 5xx (rate limits are never retried here)
MAX_ATTEMPTS = 3
#: first backoff between tries; doubles per retry
BACKOFF_SECONDS = 0.2
#: the largest answer read from a provider's API (a flow's file, a page of a listing): a bigger one
#: is refused while it streams in, never held whole (a directory's own bound is git/tree.py's)
MAX_RESPONSE_BYTES = 40 * 1024 * 1024


def get_with_retries(session: requests.Session, url: str, *, what: str, api: str, api_base: str,
                     params: Mapping[str, str] | None = None,
                     headers: Mapping[str, str] | None = None) -> requests.Response:
    """GET `url`, retrying connection errors, timeouts and 5xx. Returns the last response (any
    status); raises Unavailable when `api` (e.g. "the GitHub API") stays unreachable."""
    import requests

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = session.get(url, params=params, headers=dict(headers or {}), timeout=TIMEOUT, stream=True)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == MAX_ATTEMPTS:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
                raise Unavailable(f"{what}: {api} at {api_base} {kind} after {attempt} tries "
                                  f"({type(exc).__name__}); will retry") from None
        except requests.RequestException as exc:
            raise StorageError(f"{what}: the request to {api_base} failed ({type(exc).__name__})") from None
        else:
            if response.status_code < 500 or attempt == MAX_ATTEMPTS:
                try:
                    read_bounded(response, what=what)
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                    if attempt == MAX_ATTEMPTS:
                        raise Unavailable(f"{what}: the answer from {api_base} broke off after {attempt} tries; "
                                          "will retry") from None
                    continue
                return response
            response.close()
        time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def read_bounded(response: requests.Response, *, what: str, limit: int = MAX_RESPONSE_BYTES) -> None:
    """Read a streamed `response`'s body (decoded) into it, refusing more than `limit` bytes:
    InvalidConfig, with the connection closed, before more than that is held."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise InvalidConfig(f"{what}: the answer is {int(declared)} bytes, more than a flow's file may be "
                            f"({limit // 2**20} MiB); point the flow's path at its source")
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(64 * 1024):
        total += len(chunk)
        if total > limit:
            response.close()
            raise InvalidConfig(f"{what}: the answer is more than a flow's file may be ({limit // 2**20} MiB); "
                                "point the flow's path at its source")
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what .content, .text and .json() read from now on
    response._content_consumed = True  # type: ignore[attr-defined]


def split_host(host: str, *, provider: str, example: str) -> tuple[str, str]:
    """``[scheme://]name[:port]`` -> (scheme, name); https by default."""
    scheme, _, name = host.strip().rpartition("://")
    scheme = (scheme or "https").lower()
    name = name.rstrip("/")
    if scheme not in ("http", "https") or not name or "/" in name or any(c.isspace() for c in name):
        raise InvalidConfig(f"{provider} `host` must be a host name such as {example}, not {host!r}")
    return scheme, name


def is_http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def token_from(credentials: Mapping[str, str] | None, key: str, *, wanted: str) -> tuple[str | None, str | None]:
    """The token under `key` of the referenced Secret and where it came from; (None, None) when
    there is no Secret. `wanted` says what token to put there (for the message)."""
    if credentials is None:
        return None, None
    value = credentials.get(key)
    if not value:  # key names only: never echo the values
        present = ", ".join(sorted(credentials)) or "none"
        raise InvalidConfig(f"the referenced Secret has no {key} key (keys present: {present}); put {wanted} "
                            f"under {key}")
    return value, f"key {key} of the referenced Secret"


def check_token(token: str | None, source: str, *, provider: str) -> str | None:
    """The token without surrounding whitespace (Secrets made with `echo` end with a newline),
    or None; a token with inner spaces or non-ASCII is refused without echoing it."""
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    if any(c.isspace() for c in token) or not token.isascii() or not token.isprintable():
        raise InvalidConfig(f"{source} is not a valid {provider} token (it contains spaces, line breaks or "
                            "non-ASCII characters); store the bare token value")
    return token


def quote(segment: str) -> str:
    """One URL path segment, ``/`` included (a branch named ``feature/x``, ``group%2Fflows``)."""
    return urllib.parse.quote(segment, safe="")


def quote_path(path: str) -> str:
    """A repository path, each segment percent-encoded, ``/`` kept."""
    return "/".join(quote(part) for part in path.split("/"))


def error_message(response: requests.Response) -> str:
    """The provider's error ``message`` / ``error_description`` / ``error`` (short), or the
    HTTP reason."""
    try:
        doc = response.json()
        message = doc.get("message") or doc.get("error_description") or doc.get("error")
    except (ValueError, AttributeError):
        message = None
    text = str(message) if message else (response.reason or str(response.status_code))
    return " ".join(text.split())[:200]
