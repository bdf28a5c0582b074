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
    #: FlowStorage the operator's own token. (S3, CodeCommit, GCS and Azure may use the SDK's
    #: default chain, the operator's own cloud identity, where --ambient-identity allows it:
    #: reconcile/identity.py.)
    anonymous_without_secret: bool = False
    #: configuration fields of this block that change how it is reached, not where artifacts go
    reach_fields: frozenset[str] = frozenset()


#: git-hosted blocks: checking the flow, and verifying commits (spec.<backend>.verify, the keys its
#: Secret holds: ``verifyKeys``) decide whether a commit is pinned, not what is stored
_GIT_REACH: Final = frozenset({"checkFlow", "verify", "verifyKeys"})

BACKENDS: Final = (
    Backend("local", "Local", "flowstore.storage.local", None, reach_fields=frozenset({"validate"})),
    Backend("s3", "S3", "flowstore.storage.s3", "s3", reach_fields=frozenset({"clientOptions", "identity"})),
    Backend("gcs", "GCS", "flowstore.storage.gcs", "gcs", reach_fields=frozenset({"identity"})),
    Backend("azure", "Azure", "flowstore.storage.azure", "azure", reach_fields=frozenset({"identity"})),
    Backend("webhook", "Webhook", "flowstore.storage.webhook", None),
    Backend("docker", "Docker", "flowstore.storage.docker", "docker",
            reach_fields=frozenset({"daemonURL", "daemonTLS", "daemonTLSSecretRef"})),
    Backend("github", "GitHub", "flowstore.storage.git.github", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH),
    Backend("gitlab", "GitLab", "flowstore.storage.git.gitlab", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH),
    Backend("bitbucket", "Bitbucket", "flowstore.storage.git.bitbucket", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH),
    Backend("codecommit", "CodeCommit", "flowstore.storage.git.codecommit", "codecommit",
            reach_fields=_GIT_REACH | {"clientOptions", "identity"}),
    Backend("git", "Git", "flowstore.storage.git.plain", None, anonymous_without_secret=True,
            reach_fields=_GIT_REACH),
)
#: the spec blocks, in the order the CRD lists them
BACKEND_KEYS: Final = tuple(b.key for b in BACKENDS)


def backend(name: str) -> Backend | None:
    """The row for a spec block (``s3``) or a class name / serialized type (``S3``)."""
    return next((b for b in BACKENDS if name in (b.key, b.class_name)), None)
