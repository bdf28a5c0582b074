"""What every token-based git host (GitHub, GitLab: :class:`flowstore.storage.git.rest.TokenHosted`)
must do with its token, written once: it comes from the Secret's key, else the environment
variable of the same name, else the repository is read anonymously; it never shows in the
status, the seed's document, ``repr`` or an error; a refused token says where it came from.

A provider's test class puts :class:`TokenConformance` before :class:`GitHostedConformance` in
its bases (it provides that suite's ``storage_factory`` and hooks from the module's ``api``
fixture, the contract fake) and sets the class attributes and provider hooks below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flowstore.storage import AuthFailed, InvalidConfig, StorageError, from_serialized
from flowstore.storage.errors import RefNotFound, RepositoryNotFound
from flowstore.storage.git.rest import TokenHosted
from tests.backends.git_conformance import GitFactory, flow_script
from tests.helpers.gitrepo import LocalGitRepo


class TokenConformance:
    storage_class: ClassVar[type[TokenHosted]]
    #: the Secret key and environment variable naming the token
    token_key: ClassVar[str]
    token: ClassVar[str]
    wrong_token: ClassVar[str]
    #: the repository the fake serves `repo` as (``owner/name``, ``group/sub/project``)
    repo_name: ClassVar[str]
    #: the request header carrying the token (lower case, as the fake logs it)
    auth_header: ClassVar[str]
    #: what the provider says of a wrong token
    bad_credentials_says: ClassVar[str]
    #: configuration of the round trip beyond repo, path, ref, host and apiURL, and the labels it gives
    round_trip_extra: ClassVar[dict[str, Any]]
    round_trip_labels: ClassVar[list[str]]
    #: the host the round trip names
    round_trip_host: ClassVar[str]
    #: the refs for which an empty repository is said to be empty (GitLab only knows it by
    #: the default branch; a named ref is just not found there)
    empty_repository_refs: ClassVar[tuple[str | None, ...]] = (None, "main")

    #: a repository the fake does not serve
    missing_repo_name: ClassVar[str]

    api: Any
    repo: LocalGitRepo
    make_storage: Any

    # ------------------------------------------------------------------ GitHostedConformance's hooks
    @pytest.fixture
    def storage_factory(self, api: Any) -> GitFactory:
        """Storages of the fake's `repo_name` with the token (``token=None``: anonymous)."""
        self.api = api

        def factory(token: str | None = self.token, **kwargs: Any) -> TokenHosted:
            kwargs.setdefault("repo", self.repo_name)
            return self.storage_class(api_url=self.api_url(), access_token=token, **kwargs)

        return factory

    def make_missing_repo_storage(self) -> TokenHosted:
        return self.make_storage(repo=self.missing_repo_name, path="flows/etl.py")  # type: ignore[no-any-return]

    def make_bad_token_storage(self) -> TokenHosted:
        return self.make_storage(token=self.wrong_token, path="flows/etl.py")  # type: ignore[no-any-return]

    def requests_seen(self) -> int:
        return len(self.api.log)

    def serialized_overrides(self) -> dict[str, Any]:
        return {"credentials": {self.token_key: self.token}}

    def secret_values(self) -> list[str]:
        return [self.token]

    # ------------------------------------------------------------------ provider hooks

    def header_for(self, token: str) -> str:
        """The header's value carrying `token`."""
        return token

    def api_url(self) -> str:
        raise NotImplementedError

    def add_public_repo(self, name: str, repo: LocalGitRepo) -> None:
        raise NotImplementedError

    def assert_no_token(self, *things: Any) -> None:
        for thing in things:
            assert self.token not in (thing if isinstance(thing, str) else json.dumps(thing, default=str))

    def from_config(self, config: dict[str, Any], credentials: dict[str, str] | None = None) -> TokenHosted:
        store = self.storage_class.from_config(config, credentials=credentials)
        assert isinstance(store, self.storage_class)
        return store

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"repo": self.repo_name, "apiURL": self.api_url(), **extra}

    # ------------------------------------------------------------------ tests
    def test_token_never_in_serialize_repr_or_errors(self) -> None:
        head = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        store = self.from_config(self.config(path="flows/etl.py", ref="main"),
                                               credentials={self.token_key: f" {self.token}\n"})
        store.pin(store.resolve_ref())
        self.assert_no_token(store.to_status(), repr(store), store.url_for("flows/etl.py"))
        messages: list[str] = []
        for action in (
            lambda: store.read_file("flows/missing.py", head),
            lambda: store.resolve_ref("no-such-branch"),
            lambda: (self.api.rate_limit(1, 60), store.resolve_ref()),
        ):
            with pytest.raises(StorageError) as info:
                action()
            messages.append(info.value.message)
        bad = self.from_config(self.config(), credentials={self.token_key: self.wrong_token})
        with pytest.raises(AuthFailed) as auth:
            bad.resolve_ref("main")
        assert self.bad_credentials_says in auth.value.message
        assert f"key {self.token_key} of the referenced Secret" in auth.value.message
        self.assert_no_token(*messages, auth.value.message, str(auth.value))
        assert self.wrong_token not in auth.value.message

    def test_secret_without_the_token_key_is_invalid_config(self) -> None:
        with pytest.raises(InvalidConfig, match=self.token_key) as info:
            self.from_config(self.config(), credentials={"token": self.token})
        assert "keys present: token" in info.value.message
        self.assert_no_token(info.value.message)

    def test_environment_token_when_no_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        head = self.repo.commit({"flows/etl.py": flow_script("etl", 1)})
        config = self.config(path="flows/etl.py")
        with pytest.raises(RepositoryNotFound, match="needs a token"):  # private and anonymous: invisible
            self.from_config(config).resolve_ref()
        assert self.auth_header not in self.api.log[-1].headers
        monkeypatch.setenv(self.token_key, self.token)
        store = self.from_config(config, credentials=None)
        assert store.resolve_ref() == head
        assert self.api.log[-1].headers[self.auth_header] == self.header_for(self.token)
        monkeypatch.setenv(self.token_key, self.wrong_token)
        with pytest.raises(AuthFailed, match=f"{self.token_key} environment variable"):
            self.from_config(config).resolve_ref()

    def test_public_repository_reads_anonymously(self, tmp_path: Path) -> None:
        public = LocalGitRepo(tmp_path, name="public")
        head = public.commit({"flows/etl.py": flow_script("etl", 7)})
        self.add_public_repo("acme/public-flows", public)
        store = self.make_storage(token=None, repo="acme/public-flows", path="flows/etl.py")
        assert store.resolve_ref() == head
        assert store.get_bytes("flows/etl.py") == flow_script("etl", 7)
        assert all(self.auth_header not in r.headers for r in self.api.log)

    def test_empty_repository_is_ref_not_found(self) -> None:
        for ref in self.empty_repository_refs:
            with pytest.raises(RefNotFound, match="empty"):
                self.make_storage(ref=ref).resolve_ref()

    def test_config_keys_round_trip(self) -> None:
        config = self.config(path="/flows/etl.py", ref="release", host=self.round_trip_host, **self.round_trip_extra)
        store = self.from_config(config, credentials={self.token_key: self.token})
        doc = store.to_status()
        assert doc["type"] == self.storage_class.type_name
        assert {k: doc[k] for k in ("repo", "path", "ref", "host", "apiURL")} == {
            "repo": self.repo_name,
            "path": "flows/etl.py",
            "ref": "release",
            "host": self.round_trip_host,
            "apiURL": self.api_url(),
        }
        assert doc["labels"] == self.round_trip_labels
        again = from_serialized(doc, credentials={self.token_key: self.token})
        assert isinstance(again, self.storage_class) and again.to_status() == doc
