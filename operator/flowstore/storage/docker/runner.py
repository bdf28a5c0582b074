"""The seed's env runner for Docker storage: a flow run in a container of its image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstore.storage.docker.storage import Docker

#: runs in the image: loads the flow at argv[1] (named argv[2]) with the vendored runtime
#: (flowstore's artifacts and cloudpickle, standard library only), and runs it; a bundle is
#: extracted to the runtime's cache (HOME) and its entrypoint imported from there
RUN_BOOTSTRAP = """\
import sys
from flowstore.artifacts import loading
location, name = sys.argv[1], sys.argv[2] or None
data = open(location, "rb").read()
fmt = "bundle" if data[:2] == b"\\x1f\\x8b" else ("script" if location.endswith(".py") else "pickle")
loading.load(data, fmt, flow_name=name).run()
"""


class DockerEnvRunner:
    """Runs the flow at `flow_location` in a container of the storage's image (through the
    Engine API) with `env`; :meth:`run` returns the container's exit code."""

    def __init__(self, storage: Docker, flow_location: str) -> None:
        self.storage = storage
        self.flow_location = flow_location

    @property
    def image(self) -> str:
        """The image reference: by digest when one is known, else by tag."""
        return self.storage.image_reference()

    def run(self, env: Mapping[str, str] | None = None) -> int:
        flow_name = next((n for n, loc in self.storage.flows.items() if loc == self.flow_location), "")
        command = ["python3", "-B", "-c", RUN_BOOTSTRAP, self.flow_location, flow_name]
        return self.storage.daemon().run(self.image, command, env)
