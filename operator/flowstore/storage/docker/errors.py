"""The Docker storage's failures, and how a failed build's output is read into one of them.

Each error carries its condition reason (``reason``) and whether retrying can help, like every
storage error (:mod:`flowstore.storage.errors`); the build errors keep the tail of the build
output for the message a person reads in ``kubectl describe``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flowstore.api.constants import Reason
from flowstore.storage.docker.dockerfile import PIP_INSTALL
from flowstore.storage.errors import StorageError, Unavailable


class ImageBuildError(StorageError, reason=Reason.BUILD_FAILED):
    """Base of the image build failures; `log_tail` holds the last lines of the build output."""

    def __init__(self, message: str, *, log_tail: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.log_tail = log_tail


class HealthcheckFailed(ImageBuildError, reason=Reason.HEALTHCHECK_FAILED):
    """A flow does not load in the image (with the image's own Python). `flows` names them."""

    def __init__(self, message: str, *, log_tail: str = "", flows: Iterable[str] = ()) -> None:
        super().__init__(message, log_tail=log_tail)
        self.flows = tuple(flows)


class BaseImageNotFound(ImageBuildError, reason=Reason.BASE_IMAGE_NOT_FOUND):
    """The base image (``FROM``) cannot be found or pulled."""


class DependencyInstallFailed(ImageBuildError, reason=Reason.DEPENDENCY_INSTALL_FAILED):
    """``pip install`` of the python dependencies failed."""


class DockerfileInvalid(ImageBuildError, reason=Reason.DOCKERFILE_INVALID):
    """The Dockerfile (the user's, or the extra commands) is not valid."""


class BuildFailed(ImageBuildError, reason=Reason.BUILD_FAILED):
    """Any other build failure (a user ``RUN`` step failed, the daemon refused the build)."""


class PushFailed(StorageError, retryable=True, reason=Reason.PUSH_FAILED):
    """The registry did not take the image for a reason other than auth or reachability."""


class RunFailed(StorageError, reason=Reason.RUN_FAILED):
    """The daemon could not run the flow's container (pull, create or start failed)."""


class DaemonUnavailable(Unavailable, reason=Reason.DAEMON_UNAVAILABLE):
    """The Docker daemon (Engine API) cannot be reached."""


class RegistryUnavailable(Unavailable, reason=Reason.REGISTRY_UNAVAILABLE):
    """The registry could not be reached, or answered with a temporary failure (5xx)."""


# --------------------------------------------------------------------------- reading build output
def one_line(value: object, limit: int = 1000) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "…"


def format_tail(lines: Iterable[str], what: str = "build") -> str:
    return f"--- {what} log (tail) ---\n" + "\n".join(lines)


def looks_like_build_error(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("dockerfile", "instruction", "step", "parse", "pull", "manifest"))


_DOCKERFILE_ERRORS = re.compile(
    r"unknown instruction|dockerfile parse error|parse error|syntax error|unknown flag|"
    r"build error|cannot parse|invalid reference format|failed to process|empty continuation", re.IGNORECASE)
_BASE_IMAGE_ERRORS = re.compile(
    r"pull access denied|manifest unknown|repository does not exist|not found|initializing source|"
    r"no such image|error pulling|failed to resolve", re.IGNORECASE)


def classify_build_failure(message: str, step: str, tail: list[str], step_lines: list[str]) -> ImageBuildError:
    """The error for a failed build: which step failed decides the kind."""
    where = f" at step {step!r}" if step else ""
    log_tail = "\n".join(tail)
    if PIP_INSTALL in step or PIP_INSTALL in message:
        pip_errors = [line.strip() for line in step_lines if line.strip().startswith("ERROR:")]
        what = "; ".join(pip_errors) or message
        return DependencyInstallFailed(f"installing the python dependencies failed: {what}\n{format_tail(tail)}",
                                       log_tail=log_tail)
    if _DOCKERFILE_ERRORS.search(message):
        return DockerfileInvalid(f"the Dockerfile is not valid{where}: {message}\n{format_tail(tail)}",
                                 log_tail=log_tail)
    if step.upper().startswith("FROM ") or (not step and _BASE_IMAGE_ERRORS.search(message)):
        image = step.split()[1] if step.upper().startswith("FROM ") and len(step.split()) > 1 else "the base image"
        return BaseImageNotFound(f"the base image {image} cannot be found or pulled: {message}\n{format_tail(tail)}",
                                 log_tail=log_tail)
    return BuildFailed(f"the image build failed{where}: {message}\n{format_tail(tail)}", log_tail=log_tail)


