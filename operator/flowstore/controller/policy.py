"""The operator's policy: what it lends the authors of FlowStorages and StoredFlows.

The operator holds more authority than a tenant who may write flowstore resources in one
namespace: it reads Secrets, makes Jobs, reaches the cluster's network, writes to its volume. Each
knob below limits what a spec can make it do on someone's behalf (docs/security.md, "Policy
knobs"); every default is the safe one, and a refusal names the knob that would allow it.
Flags of ``flowstore operator``; the chart sets them from its values.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from flowstore.api.constants import SECRET_OPT_IN_LABEL
from flowstore.api.models import BuildSpec

#: Secrets the operator reads: only those a label opts in (default), or any it is pointed at
SECRET_POLICIES = ("opt-in", "any")


@dataclasses.dataclass(frozen=True)
class BuildPolicy:
    """What ``spec.build`` (builder Jobs in the flow's image) may ask for.

    enabled: ``--enable-build-jobs``; off: no Job is made and spec.build is refused.
    images: ``--build-image PATTERN``: images a build may run (``registry.example.com/team/*``,
        shell-style; an image matches with or without its tag or digest). Empty: none.
    service_accounts: ``--build-service-account NAME``: accounts a build may run as (with their
        token mounted). Empty: none; a build runs with no token.
    toleration_keys: ``--build-toleration-key KEY``: taints a build may tolerate. Empty: none.
    node_selector_keys: ``--build-node-selector-key KEY``: node labels a build may select on.
    """

    enabled: bool = False
    images: tuple[str, ...] = ()
    service_accounts: frozenset[str] = frozenset()
    toleration_keys: frozenset[str] = frozenset()
    node_selector_keys: frozenset[str] = frozenset()

    def refusal(self, spec: BuildSpec) -> str | None:
        """Why the operator will not run `spec` (a message saying what to change), or None."""
        if not self.enabled:
            return ("this operator runs no builder Jobs: remove spec.build to build in the operator's sandbox, or "
                    "ask the cluster admin to enable them (flag --enable-build-jobs, chart value builds.enabled)")
        if not image_allowed(spec.image, self.images):
            allowed = ", ".join(self.images) or "none"
            return (f"spec.build.image {spec.image} is not an image this operator builds in (allowed: {allowed}); "
                    "use an allowed image, or ask the cluster admin to allow it (flag --build-image, chart value "
                    "builds.allowedImages)")
        if spec.service_account_name and spec.service_account_name not in self.service_accounts:
            return (f"spec.build.serviceAccountName {spec.service_account_name!r} is not an account builds may run as "
                    "(builds run with no token); remove it, or ask the cluster admin to allow it (flag "
                    "--build-service-account, chart value builds.allowedServiceAccounts)")
        for toleration in spec.tolerations:
            key = str(toleration.get("key") or "")
            if key not in self.toleration_keys:
                shown = repr(key) if key else "every taint (no key)"
                return (f"spec.build.tolerations tolerates {shown}, which builds may not (allowed keys: "
                        f"{', '.join(sorted(self.toleration_keys)) or 'none'}); remove it, or ask the cluster admin "
                        "(flag --build-toleration-key, chart value builds.allowedTolerationKeys)")
        for key in spec.node_selector:
            if key not in self.node_selector_keys:
                return (f"spec.build.nodeSelector selects on {key!r}, which builds may not (allowed keys: "
                        f"{', '.join(sorted(self.node_selector_keys)) or 'none'}); remove it, or ask the cluster "
                        "admin (flag --build-node-selector-key, chart value builds.allowedNodeSelectorKeys)")
        return None


def image_allowed(image: str, patterns: Iterable[str]) -> bool:
    """`image` matches a shell-style pattern (``registry.example.com/team/*``), as written or
    without its tag and digest (so ``…/runtime`` allows ``…/runtime:2026.11`` too)."""
    repository = _repository(image)
    return any(pattern and (fnmatch.fnmatchcase(image, pattern) or fnmatch.fnmatchcase(repository, pattern))
               for pattern in patterns)


def _repository(image: str) -> str:
    """The image reference without ``@digest`` and ``:tag``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


@dataclasses.dataclass(frozen=True)
class OperatorPolicy:
    """Every knob (docs/security.md). The defaults are what a bare ``flowstore operator`` does."""

    #: ``--local-root``: Local storage lives under <root>/<namespace>; None: no Local storage
    local_root: str | None = None
    #: ``--allow-private-endpoints``: Webhook requests may reach loopback and private addresses
    allow_private_endpoints: bool = False
    #: ``--webhook-allowed-env``: the operator's environment variables a FlowStorage may template
    webhook_env: frozenset[str] = frozenset()
    #: ``--secret-policy``: "opt-in" (Secrets labelled flowstore.dev/allow=true) or "any"
    secret_policy: str = "opt-in"  # noqa: S105 - a policy name, not a secret
    builds: BuildPolicy = BuildPolicy()
    #: ``--allow-unconfined-builds``: run sandbox builds even where the kernel cannot confine them
    allow_unconfined_builds: bool = False

    def secret_refusal(self, namespace: str, name: str, secret: Mapping[str, Any]) -> str | None:
        """Why the operator will not use this Secret (it read it, and drops it), or None."""
        if self.secret_policy == "any":  # noqa: S105 - a policy name
            return None
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(SECRET_OPT_IN_LABEL) == "true":
            return None
        return (f"Secret {name!r} in namespace {namespace!r} is not labelled {SECRET_OPT_IN_LABEL}=true, and this "
                f"operator uses only Secrets opted in so: whoever may label it agrees that FlowStorages use it. Run "
                f"`kubectl label secret {name} -n {namespace} {SECRET_OPT_IN_LABEL}=true` (or ask the cluster admin "
                "for --secret-policy any, chart value secrets.policy)")
