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
    extra: str | None  # ``pip install 'flowstore[<extra>]'`` brings its SDK; None: nothing to add
    #: without a credentials Secret the operator is anonymous to it, never itself: these classes
    #: fall back to environment variables for agents, which in the operator would lend any
    #: FlowStorage the operator's own token. (S3 and CodeCommit keep the SDK's default chain on
    #: purpose: IRSA is how the operator is meant to reach them.)
    anonymous_without_secret: bool = False
    #: configuration fields of this block that change how it is reached, not where artifacts go
    reach_fields: frozenset[str] = frozenset()


BACKENDS: Final = (
    Backend("local", "Local", "flowstore.storage.local", None, reach_fields=frozenset({"validate"})),
    Backend("s3", "S3", "flowstore.storage.s3", "s3", reach_fields=frozenset({"clientOptions"})),
    Backend("gcs", "GCS", "flowstore.storage.gcs", "gcs"),
    Backend("azure", "Azure", "flowstore.storage.azure", "azure"),
    Backend("webhook", "Webhook", "flowstore.storage.webhook", None),
    Backend("docker", "Docker", "flowstore.storage.docker", "docker",
            reach_fields=frozenset({"daemonURL", "daemonTLS", "daemonTLSSecretRef"})),
    Backend("github", "GitHub", "flowstore.storage.git.github", None, anonymous_without_secret=True,
            reach_fields=frozenset({"checkFlow"})),
    Backend("gitlab", "GitLab", "flowstore.storage.git.gitlab", None, anonymous_without_secret=True,
            reach_fields=frozenset({"checkFlow"})),
    Backend("bitbucket", "Bitbucket", "flowstore.storage.git.bitbucket", None, anonymous_without_secret=True,
            reach_fields=frozenset({"checkFlow"})),
    Backend("codecommit", "CodeCommit", "flowstore.storage.git.codecommit", "codecommit",
            reach_fields=frozenset({"clientOptions", "checkFlow"})),
    Backend("git", "Git", "flowstore.storage.git.plain", None, anonymous_without_secret=True,
            reach_fields=frozenset({"checkFlow"})),
)
#: the spec blocks, in the order the CRD lists them
BACKEND_KEYS: Final = tuple(b.key for b in BACKENDS)


def backend(name: str) -> Backend | None:
    """The row for a spec block (``s3``) or a class name / serialized type (``S3``)."""
    return next((b for b in BACKENDS if name in (b.key, b.class_name)), None)


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
    "GitHub": StatusFields(place=("repo", "host", "apiURL"), revision=_GIT_REVISION),
    "GitLab": StatusFields(place=("repo", "host", "apiURL"), revision=_GIT_REVISION),
    "Bitbucket": StatusFields(place=("workspace", "project", "repo", "host", "apiURL"), revision=_GIT_REVISION),
    "CodeCommit": StatusFields(place=("repo", "region", "endpointURL", "clientOptions"),
                               revision=("commit", "requestedRef", "path", "bundleEntrypoint", "bundleIgnore")),
    "Git": StatusFields(place=("url",), revision=_GIT_REVISION),
}
