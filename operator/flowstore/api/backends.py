"""Every storage backend in one table: what a FlowStorage spec calls it, where its class lives,
which extra installs its SDK, and what the operator must know about its configuration.

Adding a backend is one row here, one module in ``flowstore.storage`` (a :class:`Storage`
subclass whose ``family`` names how the operator publishes to it), and its block in the CRD.
"""

from __future__ import annotations

import dataclasses
from typing import Final

#: FlowStorage fields every backend shares; they never decide where an artifact goes
COMMON_FIELDS: Final = frozenset({"labels", "addDefaultLabels", "secrets", "storedAsScript"})


@dataclasses.dataclass(frozen=True)
class Backend:
    key: str  # the FlowStorage spec block (camelCase, as in the CRD)
    class_name: str  # ``flowstore.storage.<class_name>``; also serialize()'s ``type``
    module: str
    extra: str | None  # the pip extra that brings its SDK (install_hint says how); None: nothing to add
    #: without a credentials Secret the operator is anonymous to it, never itself: these classes
    #: fall back to environment variables for agents, which in the operator would lend any
    #: FlowStorage the operator's own token. (S3, CodeCommit, GCS and Azure may use the SDK's
    #: default chain, the operator's own cloud identity, where --ambient-identity allows it:
    #: reconcile/identity.py.)
    anonymous_without_secret: bool = False
    #: configuration fields of this block that change how it is reached, not where artifacts go
    reach_fields: frozenset[str] = frozenset()
    #: where an agent's credentials come from: its own environment, never the FlowStorage's Secret
    #: (said when the backend refuses an agent)
    agent_credentials: str = ""


#: git-hosted blocks: checking the flow, and verifying commits (spec.<backend>.verify, the keys its
#: Secret holds: ``verifyKeys``) decide whether a commit is pinned, not what is stored
_GIT_REACH: Final = frozenset({"checkFlow", "verify", "verifyKeys"})
_AWS_AGENT = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in its environment, or an AWS "
              "profile or identity")

BACKENDS: Final = (
    Backend("local", "Local", "flowstore.storage.local", None, reach_fields=frozenset({"validate"})),
    Backend("s3", "S3", "flowstore.storage.s3", "s3", reach_fields=frozenset({"clientOptions", "identity"}),
            agent_credentials=_AWS_AGENT),
    Backend("gcs", "GCS", "flowstore.storage.gcs", "gcs", reach_fields=frozenset({"identity"}),
            agent_credentials="GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or Application Default "
                              "Credentials"),
    Backend("azure", "Azure", "flowstore.storage.azure", "azure", reach_fields=frozenset({"identity"}),
            agent_credentials="AZURE_STORAGE_CONNECTION_STRING in its environment, or an Azure identity (a storage "
                              "with an accountURL)"),
    Backend("webhook", "Webhook", "flowstore.storage.webhook", None,
            agent_credentials="the names its ${…} templates use (e.g. WEBHOOK_TOKEN), in its environment"),
    Backend("docker", "Docker", "flowstore.storage.docker", "docker",
            reach_fields=frozenset({"daemonURL", "daemonTLS", "daemonTLSSecretRef"}),
            agent_credentials="a registry login in $DOCKER_CONFIG/config.json (or ~/.docker/config.json), as "
                              "docker login writes it"),
    Backend("oci", "OCI", "flowstore.storage.oci.storage", None, anonymous_without_secret=True,
            reach_fields=frozenset({"plainHTTP"}),
            agent_credentials="a registry login in $DOCKER_CONFIG/config.json (or ~/.docker/config.json), as "
                              "docker login writes it"),
    Backend("github", "GitHub", "flowstore.storage.git.github", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH, agent_credentials="GITHUB_ACCESS_TOKEN in its environment"),
    Backend("gitlab", "GitLab", "flowstore.storage.git.gitlab", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH, agent_credentials="GITLAB_ACCESS_TOKEN in its environment"),
    Backend("bitbucket", "Bitbucket", "flowstore.storage.git.bitbucket", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH,
            agent_credentials="BITBUCKET_USERNAME and BITBUCKET_APP_PASSWORD, or BITBUCKET_ACCESS_TOKEN, in its "
                              "environment"),
    Backend("codecommit", "CodeCommit", "flowstore.storage.git.codecommit", "codecommit",
            reach_fields=_GIT_REACH | {"clientOptions", "identity"},
            agent_credentials=_AWS_AGENT),
    Backend("git", "Git", "flowstore.storage.git.plain", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH,
            agent_credentials="GIT_USERNAME and GIT_PASSWORD, GIT_TOKEN, or SSH_PRIVATE_KEY and SSH_KNOWN_HOSTS, in "
                              "its environment"),
)
#: the spec blocks, in the order the CRD lists them
BACKEND_KEYS: Final = tuple(b.key for b in BACKENDS)


def backend(name: str) -> Backend | None:
    """The row for a spec block (``s3``) or a class name / serialized type (``S3``)."""
    return next((b for b in BACKENDS if name in (b.key, b.class_name)), None)


def install_hint(extra: str | None = None) -> str:
    """How to add flowstore's `extra` (an SDK, the Kubernetes client, …) to this Python.

    flowstore is installed from its repository, not from a package index: from a checkout
    (``pip install -e 'CHECKOUT[s3]'``) or from a wheel built there (``python -m pip wheel --no-deps
    CHECKOUT``, then ``pip install 'flowstore-VERSION-py3-none-any.whl[s3]'``). Running from a
    checkout, the hint names it."""
    import sys
    from pathlib import Path

    from flowstore import __version__

    spec = f"[{extra}]" if extra else ""
    what = f"flowstore's `{extra}` extra" if extra else "flowstore"
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "operator" / "flowstore").is_dir():
        return f"install {what} from this checkout: {sys.executable} -m pip install -e '{checkout}{spec}'"
    return (f"install {what}: pip install 'flowstore-{__version__}-py3-none-any.whl{spec}' (the wheel flowstore "
            f"was installed from; build one in a flowstore checkout with python -m pip wheel --no-deps .)")


@dataclasses.dataclass(frozen=True)
class StatusFields:
    """How an agent reads one backend's ``status.storage`` (the status writer is not trusted):

    - `place`: the fields that say where the agent's requests — and so its credentials — go
      (endpoint, bucket, repository, key prefix, ...). Each must equal what the agent trusts
      (the FlowStorage's spec block, spelled the same) before anything is requested;
    - `revision`: the fields that change from one stored revision to the next (a pinned commit,
      an image digest) and never change where requests go.

    Every other field of ``status.storage`` is dropped before the agent builds its storage."""

    place: tuple[str, ...]
    revision: tuple[str, ...] = ()
    #: place fields that name the object itself rather than its container: the StoredFlow's
    #: ``status.location`` must be this key (or under this prefix) when the trusted source sets one
    key: str | None = None
    prefix: str | None = None


#: fields of ``status.storage`` every backend writes (Storage.to_status): never a place
STATUS_COMMON_FIELDS: Final = ("storedAsScript", "labels", "secrets", "flows")
_GIT_REVISION: Final = ("ref", "requestedRef", "path", "bundleEntrypoint", "bundleIgnore")
STATUS_FIELDS: Final = {
    "Local": StatusFields(place=("directory", "path"), revision=("volumeName",)),
    "S3": StatusFields(place=("bucket", "key", "keyPrefix", "region", "endpointURL"), key="key", prefix="keyPrefix"),
    "GCS": StatusFields(place=("bucket", "key", "keyPrefix", "project", "endpointURL"), key="key",
                        prefix="keyPrefix"),
    "Azure": StatusFields(place=("container", "blobName", "keyPrefix", "accountURL"), key="blobName",
                          prefix="keyPrefix"),
    "Webhook": StatusFields(place=("buildRequest", "getFlowRequest", "deleteRequest"), revision=("buildResponse",)),
    "Docker": StatusFields(place=("registryURL", "imageName"),
                           revision=("imageTag", "imageDigest", "flowDirectory", "path")),
    "OCI": StatusFields(place=("repository", "plainHTTP"), revision=("imageDigest",)),
    "GitHub": StatusFields(place=("repo", "host", "apiURL"), revision=_GIT_REVISION),
    "GitLab": StatusFields(place=("repo", "host", "apiURL"), revision=_GIT_REVISION),
    "Bitbucket": StatusFields(place=("workspace", "project", "repo", "host", "apiURL"), revision=_GIT_REVISION),
    "CodeCommit": StatusFields(place=("repo", "region", "endpointURL", "clientOptions"),
                               revision=("commit", "requestedRef", "path", "bundleEntrypoint", "bundleIgnore")),
    "Git": StatusFields(place=("url",), revision=_GIT_REVISION),
}
