"""Object stores: s3 (moto server), gcs (fake-gcs-server, built from the Go module proxy) and
azure (Azurite's blob service, from npm). Each is installed into the cache on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import procs
from . import state as st
from .cloud import Cloud, LocalCloudError, log
from .install import go_install
from .model import Server, Service
from .state import State, locked

GCS_VERSION = "v1.55.1"
# Azurite >= 3.36 needs Node 22; the machines have Node 20.
AZURITE_VERSION = "3.35.0"
# The well-known Azurite development account (public, documented by Microsoft).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# ------------------------------------------------------------------ s3: moto server


def _moto_runs(exe: Path) -> bool:
    """A pyenv shim or a stale entry point may exist without a working moto behind it."""
    try:
        done = subprocess.run([str(exe), "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def moto_server(cloud: Cloud) -> str:
    """moto_server of this Python's environment or PATH, else of a tools venv in the cache."""
    tools = cloud.cache / "tools-venv"
    candidates = [Path(sys.executable).parent / "moto_server"]
    found = shutil.which("moto_server")
    if found:
        candidates.append(Path(found))
    candidates.append(tools / "bin" / "moto_server")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK) and _moto_runs(c):
            return str(c)
    log(f"installing moto[server] into {tools}")
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run([str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "moto[server]>=5"], check=True)
    return str(tools / "bin" / "moto_server")


def _s3_argv(cloud: Cloud, state: State) -> list[str]:
    return [moto_server(cloud), "-H", "127.0.0.1", "-p", str(st.port(state, "s3"))]


def _s3_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/")
    return 200 <= code < 500


def _s3_exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    return [
        ("FLOWSTORE_S3_ENDPOINT", f"http://127.0.0.1:{st.port(state, 's3')}"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]


# ------------------------------------------------------------------ gcs: fake-gcs-server


def _gcs_argv(cloud: Cloud, state: State) -> list[str]:
    exe = go_install(("github.com/fsouza/fake-gcs-server",), GCS_VERSION, cloud.cache / "gcs" / GCS_VERSION,
                     ("fake-gcs-server",), go_cache=cloud.go_cache, cold="about 2-3 minutes")["fake-gcs-server"]
    port = st.port(state, "gcs")
    # fmt: off
    return [
        str(exe),
        "-scheme", "http",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-backend", "memory",
        "-external-url", f"http://127.0.0.1:{port}",
        "-public-host", f"127.0.0.1:{port}",
        "-log-level", "warn",
    ]
    # fmt: on


def _gcs_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/storage/v1/b")
    return code == 200


def _gcs_exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    url = f"http://127.0.0.1:{st.port(state, 'gcs')}"
    return [("STORAGE_EMULATOR_HOST", url), ("FLOWSTORE_GCS_ENDPOINT", url)]


# ------------------------------------------------------------------ azure: Azurite


def azurite_blob(cloud: Cloud) -> str:
    directory = cloud.cache / "azurite" / AZURITE_VERSION
    exe = directory / "node_modules" / ".bin" / "azurite-blob"
    if exe.is_file():
        return str(exe)
    if not shutil.which("npm"):
        raise LocalCloudError(f"{exe} missing and `npm` is not on PATH to install it")
    with locked(directory.parent):
        if exe.is_file():
            return str(exe)
        log(f"installing azurite@{AZURITE_VERSION} into {directory} (cold: about a minute; cached afterwards)")
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(tmp), "--no-audit", "--no-fund", f"azurite@{AZURITE_VERSION}"],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LocalCloudError(f"npm install azurite@{AZURITE_VERSION} failed:\n{done.stderr[-3000:]}")
        shutil.rmtree(directory, ignore_errors=True)
        tmp.replace(directory)  # .bin links are relative, so the move keeps them working
    return str(exe)


def _azure_argv(cloud: Cloud, state: State) -> list[str]:
    # No --location: Azurite refuses it together with --inMemoryPersistence (and then keeps
    # nothing on disk; its cwd is the state directory anyway).
    # fmt: off
    return [
        azurite_blob(cloud),
        "--blobHost", "127.0.0.1",
        "--blobPort", str(st.port(state, "azure")),
        "--inMemoryPersistence",
        "--loose",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    # fmt: on


def _azure_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    # Any HTTP answer (an unsigned list is refused with 403) means the blob service is up.
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/{AZURE_ACCOUNT}?comp=list")
    return code > 0


def azure_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURE_ACCOUNT};"
    )


def _azure_exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    port = st.port(state, "azure")
    assert port
    return [
        ("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(port)),
        ("FLOWSTORE_AZURE_BLOB_ENDPOINT", f"http://127.0.0.1:{port}/{AZURE_ACCOUNT}"),
    ]


S3 = Service("s3", "moto server", (Server("s3", exe_hint="moto", argv=_s3_argv, ready=_s3_ready),), _s3_exports)
GCS = Service("gcs", "fake-gcs-server", (Server("gcs", exe_hint="fake-gcs-server", argv=_gcs_argv,
                                                ready=_gcs_ready),), _gcs_exports)
# exe_hint: node's command line carries the script's path
AZURE = Service("azure", "Azurite blob", (Server("azure", exe_hint="azurite-blob", argv=_azure_argv,
                                                ready=_azure_ready),), _azure_exports)
