"""Virtualenvs of other programs' Pythons (Prefect 1, Prefect 3), built once per requirements and
Python version into ``~/.cache/flowstore/venvs/<name>-<hash>``, shared by every checkout and session
on the machine.

The build is atomic and safe for concurrent sessions: each builds in a temporary directory beside
the target and renames it into place; a session that loses the race drops its copy and uses the
winner's. A venv moved after its creation keeps working through ``bin/python``, which finds its
``pyvenv.cfg`` next to it; only the console scripts' shebangs would name the temporary path, so
callers run ``bin/python`` (``-m prefect …``), never the scripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENVS = Path.home() / ".cache" / "flowstore" / "venvs"


def venv_dir(name: str, requirements: tuple[str, ...]) -> Path:
    """Where the venv `name` for these requirements and this Python lives."""
    key = json.dumps({"requirements": requirements, "python": list(sys.version_info[:2])}, sort_keys=True)
    return VENVS / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cached_python(target: Path, requirements: tuple[str, ...], probe: str, expected: str) -> Path:
    """`target`'s python, the venv built first (pip from PyPI) unless it is there and works: the
    code `probe` run with it prints exactly `expected`."""
    exe = target / "bin" / "python"
    if _works(exe, probe, expected):
        return exe
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True, capture_output=True, timeout=300)
        done = subprocess.run([str(staging / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", *requirements],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{done.stdout}{done.stderr}")
        try:
            os.rename(staging, target)  # atomic; fails when another session got there first
        except OSError:
            if not _works(exe, probe, expected):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _works(exe, probe, expected):
        raise RuntimeError(f"{exe} does not pass its check ({probe!r} should print {expected!r})")
    print(f"venv built in {time.monotonic() - started:.0f}s: {target}", file=sys.stderr)
    return exe


def _works(exe: Path, probe: str, expected: str) -> bool:
    if not exe.exists():
        return False
    done = subprocess.run([str(exe), "-c", probe], capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and done.stdout.strip() == expected
