"""What the providers read through a REST API share: one lazily made ``requests`` session per
storage (made under a lock: readers run in threads), and for the token-based ones (GitHub,
GitLab) where the token comes from, how it is sent, the status document and how a refusal is
explained (the token's source named, never its value).

Bitbucket authenticates its own way (an app password or a token) and uses only
:class:`RestHosted`.
"""

from __future__ import annotations

import abc
import os
import threading
from typing import Any

import requests

from flowstore.storage._rest import check_token, error_message, is_http_url
from flowstore.storage.errors import AuthFailed, FileNotFound, InvalidConfig, StorageError
from flowstore.storage.git.base import GitHosted, raise_for_http


class RestHosted(GitHosted):
    """A git-hosted storage read through its provider's REST API with one shared session."""

    def _init_session(self) -> None:
        self._session_lock = threading.Lock()
        self._session_instance: requests.Session | None = None

    @abc.abstractmethod
    def _authorize(self, session: requests.Session) -> None:
        """Set the provider's headers and credentials on a new session."""

    def _session(self) -> requests.Session:
        with self._session_lock:
            if self._session_instance is None:
                session = requests.Session()
                session.headers["User-Agent"] = "flowstore"
                self._authorize(session)
                self._session_instance = session
            return self._session_instance


class TokenHosted(RestHosted):
    """A provider reached with an optional access token (anonymous without one): GitHub, GitLab.

    Subclasses set :attr:`repo` and ``_api_base`` and call :meth:`_init_endpoint` and
    :meth:`_init_token` from ``__init__``.
    """

    repo: str
    host: str | None
    api_url: str | None
    _api_base: str

    def _init_endpoint(self, host: str | None, api_url: str | None) -> None:
        """:attr:`host` and :attr:`api_url` from the configuration (an API URL must be http(s))."""
        self.host = host.strip() if host else None
        self.api_url = api_url.strip().rstrip("/") if api_url else None
        if self.api_url is not None and not is_http_url(self.api_url):
            raise InvalidConfig(f"{self.type_name} `apiURL` must be an http(s) URL, not {api_url!r}")

    def _init_token(self, access_token: str | None, token_source: str | None, env_key: str) -> None:
        """The token given, else the `env_key` environment variable, else none (anonymous)."""
        if access_token is None:
            access_token = os.environ.get(env_key) or None
            token_source = token_source or (f"the {env_key} environment variable" if access_token else None)
        self._token = check_token(access_token, token_source or "the access token", provider=self.type_name)
        self._token_source = token_source or "the access token"
        self._init_session()

    def __repr__(self) -> str:  # never shows the token
        return (f"{self.type_name}(repo={self.repo!r}, path={self.path!r}, ref={self.ref!r}, "
                f"api={self._api_base!r})")

    def _status_config(self) -> dict[str, Any]:
        doc = {"repo": self.repo, "ref": self.ref, "host": self.host, "apiURL": self.api_url}
        return {k: v for k, v in doc.items() if v is not None}

    @property
    def api_base(self) -> str:
        """The REST API base URL requests go to."""
        return self._api_base

    def repo_name(self) -> str:
        return self.repo

    def _raise(self, response: requests.Response, what: str, not_found: type[StorageError] = FileNotFound) -> None:
        """Raise the storage error an HTTP answer means (nothing for a success); a refused token
        is named by where it came from."""
        try:
            raise_for_http(response.status_code, response.headers, response.text, what=what, not_found=not_found)
        except AuthFailed as exc:
            source = self._token_source if self._token else "no token (anonymous)"
            raise AuthFailed(
                f"{exc.message} (token from {source}; {self.type_name} said: {error_message(response)})"
            ) from None
