"""The docs are executable truth: every command block of README.md and docs/*.md runs as written,
in order, against the local cloud the README starts (`KEEP=1 make demo`, the Quick start's first
block), and what the text claims it prints is what it prints (tests/helpers/doc_blocks.py says
how blocks are read and marked).

The blocks run as a reader types them: in one shell session (what a block exports holds for the
next), from a directory that holds the checkout's files (links to them, so the files a command
writes, such as `etl.bin`, land there and not in the checkout), with an environment that has no
cluster configured until the text configures one. The local cloud is one of its own
(FLOWSTORE_LOCALCLOUD_DIR), so the README's `make demo-down` at the end stops only that one.
Blocks the test cannot run say why in the doc itself; the test lists them with those reasons.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.doc_blocks import ROOT, Block, all_blocks, console_claims, in_running_order, unmatched

#: environment a reader's fresh shell does not have: the test session's cluster and servers
SESSION_ONLY = ("KUBECONFIG", "DOCKER_HOST", "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING",
                "WEBHOOK_TOKEN", "GIT_USERNAME", "GIT_PASSWORD", "VIRTUAL_ENV", "FLOWSTORE_SIGNING_KEY")
BLOCK_TIMEOUT = 900  # seconds: `KEEP=1 make demo` on a machine whose caches are cold


class Shell:
    """One reader's terminal: each block runs in bash after the state the last one left (its
    exported variables and working directory) is restored."""

    def __init__(self, home: Path, cwd: Path, env: dict[str, str]) -> None:
        self.state = home / "shell-state.sh"
        self.state.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()) +
                              f"cd {shlex.quote(str(cwd))}\n")
        self.log = home / "shell.log"

    def run(self, script: str, where: str) -> subprocess.CompletedProcess[str]:
        wrapped = (f"source {shlex.quote(str(self.state))}\nset -e -o pipefail\n{script}\n"
                   f"{{ export -p; echo cd \"$(pwd)\"; }} > {shlex.quote(str(self.state))}.new\n")
        with self.log.open("a") as log:  # as it runs: a slow block (the demo) can be followed there
            log.write(f"==== {where}\n{script}\n----\n")
            log.flush()
            out = self.log.with_suffix(".out")
            with out.open("w") as stdout:
                proc = subprocess.run(["bash", "-c", wrapped], stdout=stdout, stderr=log, text=True,
                                      timeout=BLOCK_TIMEOUT,
                                      env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                           "HOME": os.environ.get("HOME", "/root")})
            output = out.read_text()
            log.write(f"{output}---- exit {proc.returncode}\n")
        done = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
        if done.returncode == 0:
            new = self.state.with_name(self.state.name + ".new")
            new.replace(self.state)
        return done

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text()[-chars:]


def reader_environment(cloud: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SESSION_ONLY and not k.startswith(("FLOWSTORE_", "AWS_", "KUBERNETES_", "PYTEST_"))}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if not p.startswith(str(ROOT / ".venv")))
    env["FLOWSTORE_LOCALCLOUD_DIR"] = str(cloud)
    return env


def checkout_view(where: Path) -> Path:
    """A directory with the checkout's top-level entries as links: commands find examples/,
    scripts/, .venv as in the checkout; what they write stays here."""
    where.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".localcloud", ".git"):
            (where / entry.name).symlink_to(entry)
    return where


@pytest.fixture(scope="module")
def bootstrapped() -> None:
    """`make demo` bootstraps .venv when pyproject.toml is newer than its stamp; that must not
    happen from the view (it would install the package from there), so do it here first."""
    stamp = ROOT / ".venv" / ".installed"
    inputs = [ROOT / "pyproject.toml", ROOT / "scripts" / "bootstrap"]
    if not stamp.exists() or any(p.stat().st_mtime > stamp.stat().st_mtime for p in inputs):
        subprocess.run(["make", "bootstrap"], cwd=ROOT, check=True, timeout=1800)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory, bootstrapped: None) -> Iterator[Shell]:
    home = tmp_path_factory.mktemp("reader")
    cloud = home / "localcloud"
    shell = Shell(home, checkout_view(home / "flowstore"), reader_environment(cloud))
    try:
        yield shell
    finally:  # whatever failed: the demo's operator and this local cloud go (the README's last block)
        env = {**os.environ, "FLOWSTORE_LOCALCLOUD_DIR": str(cloud)}
        subprocess.run([str(ROOT / "scripts" / "demo"), "down"], env=env, capture_output=True, timeout=300)


def run_block(shell: Shell, block: Block) -> str:
    """Run one block; '' when the text told the truth, else what went wrong."""
    if block.lang == "sh":
        done = shell.run(block.text, block.where)
        return "" if done.returncode == 0 else f"exit {done.returncode}:\n{shell.tail()}"
    if block.lang == "python":
        done = shell.run(f"python - <<'FLOWSTORE_DOCS_PY'\n{block.text}FLOWSTORE_DOCS_PY", block.where)
        return "" if done.returncode == 0 else f"exit {done.returncode}:\n{shell.tail()}"
    for claim in console_claims(block):
        done = shell.run(claim.command, block.where)
        if done.returncode != 0:
            return f"$ {claim.command}\nexit {done.returncode}:\n{shell.tail()}"
        missing = unmatched(claim.output, done.stdout)
        if missing:
            return (f"$ {claim.command}\nthe text claims lines that are not in the output, from:\n  "
                    + "\n  ".join(missing) + f"\noutput:\n{done.stdout[-4000:]}")
    return ""


@pytest.mark.timeout(3600)  # `KEEP=1 make demo` is most of it: minutes, more on a loaded machine
def test_every_command_block_runs_as_written_and_prints_what_the_text_claims(reader: Shell) -> None:
    ran = []
    for block in in_running_order(all_blocks()):
        problem = run_block(reader, block)
        assert not problem, f"{block.where} ({block.lang}) drifted from what it says:\n{problem}\n" \
                            f"(the whole session: {reader.log})"
        ran.append(block.where)
    assert "README.md" in ran[0] and len(ran) >= 8, ran  # the Quick start at least


def test_blocks_not_run_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    skipped = [b for b in all_blocks() if b.lang in ("sh", "console", "python") and b.directive == "skip"]
    assert skipped, "no block skipped: then this list should be deleted, not silently empty"
    unexplained = [b.where for b in skipped if len(b.argument) < 20]
    assert not unexplained, f"blocks not run must say why, in the doc itself: {unexplained}"
    with capsys.disabled():  # listed in every run's output, never skipped silently
        print("\ncommand blocks not run, by design (the reason is in the doc):", file=sys.stderr)
        for block in skipped:
            print(f"  {block.where}: {block.argument}", file=sys.stderr)


def test_directives_are_on_blocks_they_fit() -> None:
    for block in all_blocks():
        if block.directive == "file":
            assert block.lang == "yaml" and (ROOT / block.argument).is_file(), block.where
        elif block.directive:
            assert block.lang in ("sh", "console", "python"), f"{block.where}: {block.directive} on a {block.lang}"
    unknown = [b.where for b in all_blocks() if b.lang in ("sh", "bash", "shell") and b.lang != "sh"]
    assert not unknown, f"command blocks are `sh`, `console` or `python`: {unknown}"


def test_quoted_manifests_are_the_files_they_quote() -> None:
    quoted = [b for b in all_blocks() if b.directive == "file"]
    assert quoted
    for block in quoted:
        documents = [d for d in yaml.safe_load_all((ROOT / block.argument).read_text()) if d is not None]
        for shown in yaml.safe_load_all(block.text):
            if shown is not None:
                assert shown in documents, f"{block.where}: this manifest is not in {block.argument}:\n{shown}"
