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


def get_with_retries(session: requests.Session, url: str, *, what: str, api: str, api_base: str,
                     params: Mapping[str, str] | None = None,
                     headers: Mapping[str, str] | None = None) -> requests.Response:
    """GET `url`, retrying connection errors, timeouts and 5xx. Returns the last response (any
    status); raises Unavailable when `api` (e.g. "the GitHub API") stays unreachable."""
    import requests

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = session.get(url, params=params, headers=dict(headers or {}), timeout=TIMEOUT)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == MAX_ATTEMPTS:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
                raise Unavailable(f"{what}: {api} at {api_base} {kind} after {attempt} tries "
                                  f"({type(exc).__name__}); will retry") from None
        except requests.RequestException as exc:
            raise StorageError(f"{what}: the request to {api_base} failed ({type(exc).__name__})") from None
        else:
            if response.status_code < 500 or attempt == MAX_ATTEMPTS:
                return response
            response.close()
        time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


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
