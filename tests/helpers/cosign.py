"""The real cosign CLI (sigstore, v2), built once from the Go module proxy by
scripts/lib/install-cosign.sh and cached under ~/.cache/flowstore/cosign, to check offline that
the signatures flowstore pushes beside Docker storage images are the ones cosign accepts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers.localcloud import ROOT


def install_cosign() -> str:
    """The cosign binary's path (built on first use: about two minutes; another process may be
    building it: the script waits for it)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "install-cosign.sh")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def cosign_verify(cosign: str, image: str, public_key: Path, *, username: str, password: str,
                  home: Path) -> subprocess.CompletedProcess[str]:
    """``cosign verify --key KEY --insecure-ignore-tlog IMAGE`` against the local registry (plain
    http), offline: no transparency log, no TUF root fetched (a private HOME, SIGSTORE_NO_CACHE)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TUF_ROOT": str(home / "tuf"),
           "SIGSTORE_NO_CACHE": "true", "COSIGN_EXPERIMENTAL": "0"}
    return subprocess.run([cosign, "verify", "--key", str(public_key), "--insecure-ignore-tlog=true",
                           "--allow-http-registry=true", "--registry-username", username,
                           "--registry-password", password, image],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
