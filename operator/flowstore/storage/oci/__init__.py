"""Flows delivered as OCI images (issue 26): each revision its own small image, mounted read-only
by digest into a run Pod (`volumes[].image`).

- :mod:`.image` — the deterministic image of one revision: one layer with the flow's files and a
  manifest of their sha256s, a proper image configuration labelled with the StoredFlow and digest
  (pure: no registry);
- :mod:`.registry` — pushing it and reading it back, checked, with the Docker storage's registry
  client.

The FlowStorage backend (`oci: {repository, credentialsSecretRef, plainHTTP}`) builds on these.
"""

from __future__ import annotations

from flowstore.storage.oci.image import (
    LABEL_FLOW_DIGEST,
    LABEL_MANIFEST_DIGEST,
    LABEL_STORED_FLOW,
    MANIFEST_PATH,
    FlowImage,
    FlowImageError,
    build_flow_image,
)
from flowstore.storage.oci.registry import Pushed, StoredImage, push_flow_image, read_flow_image

__all__ = [
    "LABEL_FLOW_DIGEST", "LABEL_MANIFEST_DIGEST", "LABEL_STORED_FLOW", "MANIFEST_PATH", "FlowImage",
    "FlowImageError", "Pushed", "StoredImage", "build_flow_image", "push_flow_image", "read_flow_image",
]
