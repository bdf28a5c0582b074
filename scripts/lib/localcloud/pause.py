"""The node's pause image (the Pod sandbox's process), made here: nothing is pulled from outside.

A static C program that holds the Pod's namespaces, reaps zombies and exits on SIGTERM/SIGINT,
packed as a one-layer OCI image layout tar (REAL-NODE.md) that `ctr images import` takes.
Built once per recipe into the cache, reproducibly (fixed times and owners)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from .cloud import LocalCloudError

PAUSE_IMAGE = "localhost/flowstore-pause:1"

PAUSE_C = r"""
/* The Pod sandbox's process (flowstore localcloud): hold the namespaces, reap zombies, and exit
 * on SIGTERM/SIGINT. Static, so the image needs nothing else. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def image_tar(cache: Path) -> Path:
    """The pause image's OCI layout tar in `cache` (the node's cache directory), built when absent."""
    recipe = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]
    tar_path = cache / f"pause-{recipe}.tar"
    if tar_path.is_file():
        return tar_path
    if not shutil.which("gcc"):
        raise LocalCloudError("node: gcc is needed to build the static pause binary (apt-get install gcc libc6-dev)")
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"pause-{recipe}.work.{os.getpid()}"
    work.mkdir()
    try:
        (work / "pause.c").write_text(PAUSE_C)
        done = subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(work / "pause"), str(work / "pause.c")],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LocalCloudError(f"node: building the pause binary failed (is libc6-dev installed?):\n{done.stderr}")
        tmp = tar_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(oci_layout({"pause": ((work / "pause").read_bytes(), 0o755)}, PAUSE_IMAGE,
                                   {"Entrypoint": ["/pause"], "User": "65535:65535"}))
        tmp.replace(tar_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar_path


def oci_layout(files: dict[str, tuple[bytes, int]], name: str, config: dict[str, object]) -> bytes:
    """An OCI image layout tar of a one-layer image holding `files` (path -> (content, mode)),
    named `name` for `ctr images import`, with the given image config (Entrypoint, User, ...)."""
    layer = tar_bytes(files, gz=True)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", image_config),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{**_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
                       "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}],
    }).encode()
    blobs = {"oci-layout": (b'{"imageLayoutVersion": "1.0.0"}', 0o644), "index.json": (index, 0o644)}
    for blob in (layer, image_config, manifest):
        blobs[f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}"] = (blob, 0o644)
    return tar_bytes(blobs)


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}


def tar_bytes(files: dict[str, tuple[bytes, int]], gz: bool = False) -> bytes:
    """A reproducible tar (fixed times and owners) of name -> (content, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(parent) for n in files for parent in Path(n).parents} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw
