"""Prefect 1.4.1 (the seed's own system) in a virtualenv of its own, so its code can read what
flowstore writes: `StorageSchema().load(storage.serialize())`, `Local.get_flow`, `S3.get_flow`.

flowstore is *not* installed there: the point is that Prefect's own code reads flowstore's output.
Tests hand it JSON and get JSON back (:func:`run`).

The venvs (Prefect alone; an agent's) are built once per requirements and Python version into
``~/.cache/flowstore/venvs/prefect-1.4.1-<hash>`` and ``prefect-agent-1.4.1-<hash>`` when missing
(a clean CI machine: pip from PyPI, a minute or two), as :mod:`tests.helpers.venvs` describes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from tests.helpers import venvs

PREFECT_VERSION = "1.4.1"
#: prefect 1.4.1's schemas break with marshmallow 3.22 (``fields.Dict(keys=fields.Str)`` with a
#: class, not an instance, is refused there); boto3 is what its S3 storage imports
REQUIREMENTS = (f"prefect=={PREFECT_VERSION}", "marshmallow<3.22", "boto3")
#: an agent: Prefect 1.4.1 plus what flowstore's client needs (flowstore itself comes from this
#: checkout on PYTHONPATH, see :func:`run_agent`), so it loads through flowstore.client.load_flow
AGENT_REQUIREMENTS = (*REQUIREMENTS, "cloudpickle>=3.0", "pathspec>=0.12", "pyyaml>=6.0", "requests>=2.31",
                      "kubernetes>=29.0")
OPERATOR_SOURCE = Path(__file__).resolve().parents[2] / "operator"


def venv_dir(requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """Where the venv for these requirements and this Python lives."""
    kind = "prefect" if requirements == REQUIREMENTS else "prefect-agent"
    return venvs.venv_dir(f"{kind}-{PREFECT_VERSION}", requirements)


def python(requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """The venv's python, built first when missing."""
    return venvs.cached_python(venv_dir(requirements), requirements,
                               "import prefect; print(prefect.__version__)", PREFECT_VERSION)


def run_agent(code: str, payload: Any, *, env: dict[str, str] | None = None) -> Any:
    """:func:`run` in an agent's environment: Prefect 1.4.1 and flowstore's client (this
    checkout's, on PYTHONPATH), as a team's Prefect 1 agent would have them."""
    return run(code, payload, env={**(env or {}), "PYTHONPATH": str(OPERATOR_SOURCE)},
               requirements=AGENT_REQUIREMENTS)


def run(code: str, payload: Any, *, env: dict[str, str] | None = None, cwd: Path | None = None,
        requirements: tuple[str, ...] = REQUIREMENTS) -> Any:
    """Run `code` with Prefect's python: it reads the JSON `payload` from stdin as ``payload`` and
    prints its answer with ``answer(obj)`` (JSON). Raises with the child's output on failure."""
    prelude = textwrap.dedent("""\
        import json, sys, warnings
        warnings.simplefilter("ignore")
        payload = json.loads(sys.stdin.read())
        def answer(obj):
            print("@@ANSWER@@" + json.dumps(obj, default=repr))
        """)
    home = tempfile.mkdtemp(prefix="prefect1-home-")
    try:
        child_env = {**os.environ, **(env or {}), "HOME": home, "PREFECT__HOME_DIR": f"{home}/.prefect",
                     "PREFECT__LOGGING__LEVEL": "WARNING"}
        done = subprocess.run([str(python(requirements)), "-c", prelude + textwrap.dedent(code)],
                              input=json.dumps(payload), capture_output=True, text=True, timeout=300,
                              env=child_env, cwd=cwd or home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@ANSWER@@")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"prefect {PREFECT_VERSION} child failed ({done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("@@ANSWER@@"))


if __name__ == "__main__":
    # `python -m tests.helpers.prefect1 agent-python` (the demo): the agent venv's python, built
    # first when missing; `python` the same for the Prefect-only venv.
    which = sys.argv[1] if len(sys.argv) > 1 else "python"
    if which not in ("python", "agent-python"):
        sys.exit(f"usage: python -m tests.helpers.prefect1 [python|agent-python], not {which!r}")
    print(python(AGENT_REQUIREMENTS if which == "agent-python" else REQUIREMENTS))
