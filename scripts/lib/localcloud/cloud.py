"""One local cloud: where its state lives, where binaries are cached, which versions it runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: the repository (scripts/lib/localcloud/cloud.py -> the checkout)
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_KUBE_VERSION = "v1.37.2"


class LocalCloudError(Exception):
    """Something the person running localcloud must know or fix; printed, exit status 1."""


def log(msg: str) -> None:
    print(f"localcloud: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cloud:
    """One checkout's (or one test's) local cloud.

    state_dir: state.json, logs, etcd data, certs, kubeconfig, the node's directories
    ($FLOWSTORE_LOCALCLOUD_DIR, default <repo>/.localcloud). cache: binaries and installs shared
    by every local cloud of the machine (~/.cache/flowstore), never removed, locked per entry.
    """

    root: Path
    state_dir: Path
    cache: Path
    kube_version: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, root: Path = ROOT) -> Cloud:
        env = os.environ if environ is None else environ
        state_dir = Path(env.get("FLOWSTORE_LOCALCLOUD_DIR") or root / ".localcloud").resolve()
        home = Path(env.get("HOME") or Path.home())
        return cls(root=root, state_dir=state_dir, cache=home / ".cache" / "flowstore",
                   kube_version=env.get("FLOWSTORE_KUBE_VERSION") or DEFAULT_KUBE_VERSION)

    @property
    def lib(self) -> Path:
        """scripts/lib: the shell helpers beside this package."""
        return self.root / "scripts" / "lib"

    @property
    def kube_bin(self) -> Path:
        return self.cache / "kube" / self.kube_version

    @property
    def go_cache(self) -> Path:
        """GOCACHE for every Go build of the local cloud: under the shared cache, so a CI machine
        that keeps ~/.cache/flowstore keeps the compiled packages too, and a new pinned version
        recompiles only what changed."""
        return self.cache / "go-build"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def credentials(self, name: str) -> tuple[str, str]:
        """A `user:password` file a server made (registry-credentials, git-credentials)."""
        user, _, password = (self.state_dir / name).read_text().strip().partition(":")
        return user, password
