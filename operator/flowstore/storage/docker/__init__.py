"""The seed's Docker storage: every flow of a storage in one image, pushed to a registry.

- :mod:`.storage` — the :class:`Docker` storage class and the seed's interface (``build``,
  ``create_dockerfile_object``, ``push_image``, ``pull_image``, ``get_flow``), on top of
  :mod:`.images` — what one image is made of and how it is built and pushed, on top of
  :mod:`.base` — configuration, naming, the state status keeps, registry reads;
- :mod:`.dockerfile` — the base image's Dockerfile and build context, and the healthcheck
  (pure: no daemon, no registry);
- :mod:`.layers` — one layer per flow appended to the base image without a daemon;
- :mod:`.daemon` — the Docker Engine API: build, push, pull, healthcheck, run;
- :mod:`.oci` — a registry (OCI distribution) client: manifests, blobs, files inside layers;
- :mod:`.credentials` — registry credentials from a dockerconfigjson Secret or the Docker config;
- :mod:`.errors` — the failures, and how a failed build's output is read;
- :mod:`.runner` — the seed's env runner: a flow run in a container of its image.
"""

from __future__ import annotations

from flowstore.storage.docker.credentials import registry_credentials
from flowstore.storage.docker.daemon import HEALTHCHECK_LABEL, HEALTHCHECK_REPOSITORY_LABEL, DaemonTLS
from flowstore.storage.docker.errors import (
    BaseImageNotFound,
    BuildFailed,
    DaemonUnavailable,
    DependencyInstallFailed,
    DockerfileInvalid,
    HealthcheckFailed,
    ImageBuildError,
    PushFailed,
    RegistryUnavailable,
    RunFailed,
)
from flowstore.storage.docker.images import BuiltImage, ImageFlow, ImagePlan
from flowstore.storage.docker.runner import DockerEnvRunner
from flowstore.storage.docker.storage import Docker

__all__ = [
    "HEALTHCHECK_LABEL",
    "HEALTHCHECK_REPOSITORY_LABEL",
    "BaseImageNotFound",
    "BuildFailed",
    "BuiltImage",
    "DaemonTLS",
    "DaemonUnavailable",
    "DependencyInstallFailed",
    "Docker",
    "DockerEnvRunner",
    "DockerfileInvalid",
    "HealthcheckFailed",
    "ImageBuildError",
    "ImageFlow",
    "ImagePlan",
    "PushFailed",
    "RegistryUnavailable",
    "RunFailed",
    "registry_credentials",
]
