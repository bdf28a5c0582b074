"""What `flowstore` prints when the environment is not ready: one table, applied once at the CLI's
top level, so every subcommand (today's and the next) turns the same errors into the same line.

Each row recognises an exception and says, in one line, what is wrong and what to do about it:

    flowstore: cannot reach the Kubernetes API server at https://127.0.0.1:6443 (connection refused); hint: …

Exit codes: 2 when the environment is not ready (a missing package, no cluster configured or
reachable, an output path that cannot be written), 1 when it is but the flow is not (not found,
not stored yet, refused by verification), as argparse uses 2 for a command line it cannot use.
Anything the table does not know is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable

from flowstore.api.backends import install_hint

ENVIRONMENT = 2
FLOW = 1

#: a module flowstore imports, and the extra that installs it
EXTRA_OF_MODULE = {
    "kubernetes": "client",
    "kopf": "operator",
    "prometheus_client": "operator",
    "shtab": "client",
    "boto3": "s3",
    "botocore": "s3",
    "google": "gcs",
    "azure": "azure",
    "docker": "docker",
}
LOCAL_CLOUD = 'eval "$(scripts/localcloud env)"'


@dataclasses.dataclass(frozen=True)
class Problem:
    message: str
    hint: str
    code: int = ENVIRONMENT

    def line(self) -> str:
        return f"flowstore: {self.message}" + (f"; hint: {self.hint}" if self.hint else "")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is(exc: BaseException, module: str, name: str) -> bool:
    return any(type(e).__module__.startswith(module) and type(e).__name__ == name for e in _chain(exc))


def _kubeconfig() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def _api_server() -> str:
    try:
        from kubernetes import client

        host = client.Configuration.get_default_copy().host
        return str(host)
    except Exception:
        return "the API server"


# ----------------------------------------------------------------------------- the rows
def flow_needs_module(exc: BaseException) -> Problem | None:
    from flowstore.artifacts.loading import FlowNeedsModule

    if not isinstance(exc, FlowNeedsModule):
        return None
    if (exc.name or "").split(".")[0] == "prefect":
        return Problem("the flow needs the `prefect` package, which is not installed here",
                       "run it where its runtime is (the Python and Prefect versions it was built with are in "
                       "`flowstore locate NAME -n NS`, artifact.versions), or install that Prefect version here")
    return Problem(f"the flow needs the `{exc.name}` module, which is not installed here",
                   "run it where the flow's own dependencies are installed, or install them here")


def missing_package(exc: BaseException) -> Problem | None:
    """One of flowstore's optional dependencies (an extra), imported when a command needs it."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name or exc.name.split(".")[0] == "flowstore":
        return None  # a flowstore module missing is a broken install: keep the traceback
    extra = EXTRA_OF_MODULE.get(exc.name.split(".")[0])
    return Problem(f"the `{exc.name.split('.')[0]}` package is not installed here",
                   install_hint(extra))


def no_kubeconfig(exc: BaseException) -> Problem | None:
    if not _is(exc, "kubernetes.config", "ConfigException"):
        return None
    where = os.environ.get("KUBECONFIG")
    files = [f for f in (where or "").split(os.pathsep) if f]
    if files and not any(os.path.exists(f) for f in files):
        found = f"KUBECONFIG names {where}, which does not exist"
    elif not where and not os.path.exists(_kubeconfig()):
        found = "KUBECONFIG is not set and there is no ~/.kube/config"
    else:
        found = f"{_kubeconfig()} does not configure a cluster ({exc})"
    return Problem(f"no Kubernetes cluster configured: not in a Pod, and {found}",
                   f"point KUBECONFIG at your cluster's kubeconfig (the local cloud's: {LOCAL_CLOUD})")


def api_unreachable(exc: BaseException) -> Problem | None:
    if not (_is(exc, "urllib3", "MaxRetryError") or _is(exc, "urllib3", "NewConnectionError")):
        return None
    reason = next((str(e) for e in _chain(exc) if isinstance(e, OSError) and e.errno), "")
    refused = "connection refused" if "refused" in str(exc).lower() or "refused" in reason.lower() else \
        "no answer"
    if _is(exc, "urllib3", "SSLError"):
        return Problem(f"TLS with the Kubernetes API server at {_api_server()} failed ({exc})",
                       f"check the certificate authority in {_kubeconfig()}")
    return Problem(f"cannot reach the Kubernetes API server at {_api_server()} ({refused})",
                   f"is the cluster running? (the local cloud: scripts/localcloud status); KUBECONFIG is "
                   f"{_kubeconfig()}")


def api_refused(exc: BaseException) -> Problem | None:
    from_api = next((e for e in _chain(exc) if any(
        cls.__name__ == "ApiException" and cls.__module__.startswith("kubernetes") for cls in type(e).__mro__)), None)
    if from_api is None:
        return None
    status = getattr(from_api, "status", None)
    reason = getattr(from_api, "reason", "") or ""
    if status == 401:
        return Problem(f"the Kubernetes API server did not accept the credentials in {_kubeconfig()} (401 {reason})",
                       "log in again, or use a kubeconfig whose token or certificate is current")
    if status == 403:
        return Problem(f"the Kubernetes API server refused this request (403 {reason}): {_api_message(from_api)}",
                       "ask for get on storedflows.flowstore.dev in that namespace (kubectl auth can-i get "
                       "storedflows -n NS)")
    if status == 404:
        return Problem(f"the Kubernetes API server has no StoredFlow resource (404 {reason})",
                       "install the CRDs: kubectl apply --server-side -f crds/")
    return None


def _api_message(exc: object) -> str:
    import json

    try:
        return str(json.loads(getattr(exc, "body", "") or "{}").get("message") or "")
    except ValueError:
        return ""


def cannot_write(exc: BaseException) -> Problem | None:
    if not isinstance(exc, OSError) or not exc.filename or isinstance(exc, ConnectionError):
        return None
    path = str(exc.filename)
    parent = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOENT and not os.path.isdir(parent):
        return Problem(f"cannot write {path}: the directory {parent} does not exist",
                       f"create it first (mkdir -p {parent}), or give -o another path")
    if exc.errno == errno.EEXIST:
        return Problem(f"cannot write {path}: it exists already", "remove it, or give -o another path")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Problem(f"cannot write {path}: {exc.strerror}", "give -o a path you may write to")
    return Problem(f"cannot use {path}: {exc.strerror}", "give -o another path")


def agent_refusal(exc: BaseException) -> Problem | None:
    """What an agent refused, or could not check (flowstore.client.AGENT_ERRORS): a status that is
    malformed or points where the agent does not trust, a bundle, a signature, bytes that do not
    match; each message says what to do. Not being allowed to read the FlowStorage, and an agent
    cache it may not use, are the environment's; the rest the flow's."""
    from flowstore.agent.errors import TrustUnavailable
    from flowstore.artifacts.cache import CacheError
    from flowstore.client import AGENT_ERRORS
    from flowstore.storage import MissingDependency

    if not isinstance(exc, AGENT_ERRORS) or isinstance(exc, MissingDependency):
        return None
    return Problem(str(exc), "", code=ENVIRONMENT if isinstance(exc, (CacheError, TrustUnavailable)) else FLOW)


def flow_problem(exc: BaseException) -> Problem | None:
    """The flow, not the environment: not found, not stored yet, refused by verification, the
    storage's own errors (each with its message for a person)."""
    from flowstore.artifacts.signing import SignatureError
    from flowstore.storage import MissingDependency, StorageError

    if isinstance(exc, MissingDependency):
        return Problem(str(exc), "")
    if isinstance(exc, (LookupError, StorageError, SignatureError)) and type(exc).__module__.startswith("flowstore"):
        return Problem(str(exc), "", code=FLOW)
    return None


#: the table: the first row that recognises an exception decides
PROBLEMS: tuple[Callable[[BaseException], Problem | None], ...] = (
    flow_needs_module, missing_package, no_kubeconfig, api_unreachable, agent_refusal, api_refused, flow_problem,
    cannot_write,
)


def explain(exc: BaseException) -> Problem | None:
    for row in PROBLEMS:
        problem = row(exc)
        if problem is not None:
            return problem
    return None
