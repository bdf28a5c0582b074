"""boto3 clients for the AWS backends (S3, CodeCommit), from one shared session cache.

A new boto3 Session loads the service models again (tens to hundreds of ms); a client from a
loaded session takes ~10 ms. So every AWS storage of this process shares one session per set
of credentials (for the SDK's default chain: per value of the environment it reads). Sessions
are not thread-safe: clients are made under the lock; the clients themselves are.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flowstore.api.backends import install_hint
from flowstore.storage.errors import IdentityRejected, InvalidConfig, MissingDependency, StorageError, Unavailable
from flowstore.storage.identity import WorkloadIdentity

#: keys of the credentials mapping (the referenced Secret's data)
ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a key name, not a secret
SESSION_TOKEN = "AWS_SESSION_TOKEN"  # noqa: S105 - a key name, not a secret

#: what the default credential chain reads from the environment
_CHAIN_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
              "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
_SESSIONS: dict[tuple[tuple[str, str], ...], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def make_client(service: str, *, credentials: Mapping[str, str] | None, client_options: Mapping[str, Any],
                endpoint_url: str | None, region: str | None, defaults: Mapping[str, Any], extra: str,
                label: str, failure: Callable[[BaseException], str],
                identity: WorkloadIdentity | None = None) -> Any:
    """A boto3 client for `service`. `credentials` None means the SDK's default chain, unless
    `identity` names a role to assume with a ServiceAccount token (:func:`web_identity_session`);
    ``client_options["config"]`` (a botocore Config or a dict) is merged over `defaults`. A
    missing SDK names the pip extra; a client that cannot be made is InvalidConfig with the
    message `failure(exc)` (the caller redacts and says what to check)."""
    try:
        import boto3.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError as exc:
        raise MissingDependency(f"{label} storage needs {exc.name or 'boto3'}; hint: {install_hint(extra)}") \
            from None

    session_kwargs: dict[str, str] = {}
    if credentials is not None:
        session_kwargs["aws_access_key_id"] = credentials[ACCESS_KEY_ID]
        session_kwargs["aws_secret_access_key"] = credentials[SECRET_ACCESS_KEY]
        if credentials.get(SESSION_TOKEN):
            session_kwargs["aws_session_token"] = credentials[SESSION_TOKEN]
    options = dict(client_options)
    config = Config(**defaults)
    user_config = options.pop("config", None)
    try:
        if isinstance(user_config, Mapping):
            user_config = Config(**user_config)
        if user_config is not None:
            config = config.merge(user_config)
        if endpoint_url:
            options.setdefault("endpoint_url", endpoint_url)
        if region:
            options.setdefault("region_name", region)
        if identity is not None:  # its own session: its credentials are its alone
            return web_identity_session(identity, region).client(service, config=config, **options)
        with _SESSIONS_LOCK:
            key = tuple(sorted(session_kwargs.items())) or tuple(
                (name, os.environ.get(name, "")) for name in _CHAIN_ENV)
            session = _SESSIONS.get(key)
            if session is None:
                if len(_SESSIONS) >= 64:
                    _SESSIONS.clear()
                session = _SESSIONS[key] = boto3.session.Session(**session_kwargs)
            return session.client(service, config=config, **options)
    except (BotoCoreError, ValueError, TypeError) as exc:
        raise InvalidConfig(failure(exc)) from None


def describe_endpoint(endpoint_url: str | None, client: Any) -> str:
    """Where a storage's requests go, for messages: its endpoint, else its client's, else the default."""
    if endpoint_url:
        return endpoint_url
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return str(endpoint) if endpoint else "the default AWS endpoint"


class _NoCache(dict[str, Any]):
    """The fetcher's cache of credentials: none. The refreshable credentials keep them, and
    decide (by their own clock) when to ask again; a cache here would answer by the wall clock."""

    def __setitem__(self, key: str, value: Any) -> None:
        return None


def web_identity_session(identity: WorkloadIdentity, region: str | None) -> Any:
    """A boto3 Session whose only credentials are `identity`'s role, assumed with STS
    AssumeRoleWithWebIdentity (botocore's own fetcher; the STS endpoint is the SDK's, or
    ``AWS_ENDPOINT_URL_STS``). botocore's refreshable credentials renew them before they
    expire (15 minutes ahead, on `identity`'s clock), asking for a fresh ServiceAccount token
    each time: no request is made with expired credentials."""
    import boto3.session
    import botocore.session
    from botocore.credentials import (
        AssumeRoleWithWebIdentityCredentialFetcher,
        CredentialProvider,
        CredentialResolver,
        DeferredRefreshableCredentials,
    )

    core = botocore.session.Session()

    def sts_client(service: str, **kwargs: Any) -> Any:
        return core.create_client(service, region_name=region or "us-east-1", **kwargs)

    fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
        client_creator=sts_client, web_identity_token_loader=identity.tokens.token, role_arn=identity.role_arn,
        extra_args={"RoleSessionName": identity.session_name}, cache=_NoCache())

    class WebIdentity(CredentialProvider):  # type: ignore[misc]
        METHOD = "assume-role-with-web-identity"

        def load(self) -> Any:
            return DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method=self.METHOD,
                                                  time_fetcher=identity.now)

    core.register_component("credential_provider", CredentialResolver([WebIdentity()]))
    return boto3.session.Session(botocore_session=core)


def identity_rejected(identity: WorkloadIdentity, code: str | None, detail: str, status: int | None) -> StorageError:
    """STS refused the ServiceAccount token (or could not be reached)."""
    if status is not None and (status >= 500 or status == 429):
        return Unavailable(f"AWS STS answered a temporary failure assuming {identity.describe()} ({code or status})")
    return IdentityRejected(
        f"AWS STS refused to let {identity.describe()} assume the role ({code or status}: {detail}); check that the "
        f"role's trust policy allows sts:AssumeRoleWithWebIdentity from the cluster's OIDC provider for "
        f"sub {identity.token_subject} and aud {identity.audience}"
    )


#: boto3 client keyword arguments that are credentials: never written to any document
CREDENTIAL_OPTIONS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})


def is_plain(value: Any) -> bool:
    """JSON data (what a CRD or the seed's schema can hold), not e.g. a botocore Config object."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def seed_client_options(client_options: Mapping[str, Any], endpoint_url: str | None,
                        region: str | None) -> dict[str, Any] | None:
    """The seed's ``client_options`` (boto3 client keyword arguments): the plain options, with
    flowstore's endpoint and region spelled as boto3 takes them (the options win, as they do when
    the client is made); never credentials. None when empty."""
    options = {k: v for k, v in client_options.items() if is_plain(v) and k not in CREDENTIAL_OPTIONS}
    if endpoint_url:
        options.setdefault("endpoint_url", endpoint_url)
    if region:
        options.setdefault("region_name", region)
    return options or None


def config_from_seed_client_options(client_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The camelCase config fields (``endpointURL``, ``region``, ``clientOptions``) of the seed's
    ``client_options``: the inverse of :func:`seed_client_options`."""
    options = dict(client_options or {})
    return {"endpointURL": options.pop("endpoint_url", None), "region": options.pop("region_name", None),
            "clientOptions": options}


def is_credentials_error(exc: BaseException) -> bool:
    """The SDK found no credentials, or only part of them (its default chain came up empty)."""
    try:
        from botocore.exceptions import CredentialRetrievalError, NoCredentialsError, PartialCredentialsError
    except ImportError:
        return False
    return isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError)


def is_connection_error(exc: BaseException) -> bool:
    """Unreachable endpoint, timeouts, dropped or truncated responses: worth a retry."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, IncompleteReadError, ResponseStreamingError
    except ImportError:
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError)
