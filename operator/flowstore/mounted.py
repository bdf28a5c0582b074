"""A flow mounted from its OCI image (docs/oci-volumes.md): checked, then copied where it runs.

A run Pod mounts a StoredFlow's image read-only by digest (`volumes[].image`); the kubelet and
the runtime pulled it and checked every blob against that digest. What is left to check here is
that the mount *is* that flow: a runtime without image-volume support mounts an empty directory,
and a Pod spec can name another image. :func:`check_mount` reads ``flowstore-manifest.json`` at
the mount's root, compares its ``flowDigest`` with the digest status recorded
(``status.artifact.digest``, which ``flowstore locate -o pod-volume`` prints), hashes every file
the manifest lists and refuses anything it does not list. Nothing here needs credentials, the
Kubernetes API or the network: only the files.

- :func:`use_mounted_flow` — the Prefect 3 pull step (``flowstore.prefect.use_mounted_flow``):
  check, then write the verified bytes into a fresh directory under the working directory, which
  it returns for Prefect to change into;
- ``python -m flowstore.mounted check PATH DIGEST`` — the same check for any other runner;
- ``python -m flowstore.mounted pull REFERENCE DIGEST INTO`` — the init-container fallback for
  clusters without image volumes (:mod:`flowstore.oci_volumes` prints it): fetch the image by
  digest through the registry client into an emptyDir, then the same check.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: as :mod:`flowstore.storage.oci.image` writes them (a unit test holds the two equal; this module
#: imports nothing of the storage code, so a run Pod needs no registry client to check a mount)
MANIFEST_PATH = "flowstore-manifest.json"
MANIFEST_SCHEMA = 1
#: where an image keeps a bundle's own bytes (its files are unpacked beside it): not copied
BUNDLE_LOCATION = ".flowstore/bundle.tar.gz"
#: a manifest is small: a larger file is not one of ours
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_DIGEST_PREFIX = "sha256:"


class MountError(RuntimeError):
    """The mount is not the recorded flow (said in the message, with what to do)."""


@dataclasses.dataclass(frozen=True)
class MountedFlow:
    """A checked mount: which StoredFlow revision it is and its files' verified bytes."""

    root: str
    stored_flow: str
    flow_digest: str
    files: Mapping[str, bytes]


def _sha256(data: bytes) -> str:
    return _DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def _read_regular(path: Path, what: str) -> bytes:
    """The bytes of `path`, a regular file (never through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MountError(f"{what}: cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise MountError(f"{what}: {path} is not a regular file")
        return fh.read()


def _safe_relative(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name
            and "\x00" not in name and posixpath.normpath(name) == name and name != ".."
            and not name.startswith("../") and name != MANIFEST_PATH)


def check_mount(path: str | os.PathLike[str], digest: str) -> MountedFlow:
    """The flow mounted at `path`, if it is the revision whose artifact digest is `digest`
    (``sha256:…``); else :class:`MountError`."""
    root = Path(path)
    what = f"the flow mounted at {root}"
    expected = digest if digest.startswith(_DIGEST_PREFIX) else _DIGEST_PREFIX + digest
    if not root.is_dir():
        raise MountError(f"{what}: no such directory; the Pod does not mount the flow's image volume there "
                         "(compare its volumeMounts with `flowstore locate NAME -o pod-volume`)")
    manifest_file = root / MANIFEST_PATH
    if not manifest_file.exists():
        present = sorted(p.name for p in root.iterdir())[:5]
        state = "is empty" if not present else f"holds {present} but no {MANIFEST_PATH}"
        raise MountError(f"{what} {state}: the image volume was not mounted (a runtime without image-volume support "
                         "mounts an empty directory; Kubernetes >= 1.35 and containerd >= 2.1 are needed), or it is "
                         "not a flowstore flow image. On such clusters use `flowstore locate NAME --fallback init`")
    if manifest_file.stat().st_size > MAX_MANIFEST_BYTES:
        raise MountError(f"{what}: {MANIFEST_PATH} is larger than any flow manifest")
    raw = _read_regular(manifest_file, what)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise MountError(f"{what}: {MANIFEST_PATH} is not JSON") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or doc.get("schema") != MANIFEST_SCHEMA or not all(
            _safe_relative(k) and isinstance(v, str) for k, v in files.items()):
        raise MountError(f"{what}: {MANIFEST_PATH} is not a flowstore file manifest (schema {MANIFEST_SCHEMA})")
    if doc.get("flowDigest") != expected:
        raise MountError(f"{what} is revision {doc.get('flowDigest')!r} of {doc.get('storedFlow')!r}, not the "
                         f"recorded {expected}; the Pod mounts another image than status names. Refusing to run it")
    contents: dict[str, bytes] = {}
    for name, recorded in sorted(files.items()):
        data = _read_regular(root / name, what)
        if _sha256(data) != recorded:
            raise MountError(f"{what}: {name} has digest {_sha256(data)}, the manifest records {recorded}; "
                             "the mount was altered. Refusing to run it")
        contents[name] = data
    listed = set(files) | {MANIFEST_PATH}
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        for entry in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            name = (here / entry).relative_to(root).as_posix()
            if name not in listed:
                raise MountError(f"{what} holds {name}, which its manifest does not list; refusing to run it")
    return MountedFlow(root=str(root), stored_flow=str(doc.get("storedFlow") or ""), flow_digest=expected,
                       files=contents)


def copy_out(mounted: MountedFlow, destination: Path) -> Path:
    """Write the checked bytes (never re-read from the mount) into `destination`, replaced whole:
    a fresh working copy, since a flow run writes where it runs and the mount is read-only."""
    destination = destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".flowstore-", dir=destination.parent))
    try:
        for name, data in mounted.files.items():
            if name == BUNDLE_LOCATION:
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def use_mounted_flow(path: str, digest: str, directory: str | None = None) -> dict[str, Any]:
    """Deployment pull step: the flow mounted at `path`, checked against `digest`, copied into
    the working directory.

        pull:
          - flowstore.prefect.use_mounted_flow:
              path: /flow                 # the image volume's mountPath
              digest: "sha256:…"          # status.artifact.digest (flowstore locate -o pod-volume)

    Returns ``directory`` (absolute; Prefect changes into it and resolves the entrypoint there),
    ``digest`` and ``storedflow``. An empty or wrong mount raises :class:`MountError`."""
    mounted = check_mount(path, digest)
    name = mounted.stored_flow.replace("/", "_") or "flow"
    target = copy_out(mounted, Path(directory) if directory else Path.cwd() / name)
    print(f"flowstore: using {mounted.stored_flow or 'the flow'} {mounted.flow_digest} mounted at {path} "
          f"({len(mounted.files)} files checked) in {target}", file=sys.stderr)
    return {"directory": str(target), "digest": mounted.flow_digest, "storedflow": mounted.stored_flow}


def pull_into(reference: str, digest: str, into: str, *, plain_http: bool = False) -> MountedFlow:
    """The init-container fallback: the image `reference` (``host/path@sha256:…``) fetched by
    digest (every blob verified by the registry client), its one layer's regular files written
    into `into` (an emptyDir), then :func:`check_mount`. Credentials: ``$DOCKER_CONFIG``."""
    from flowstore.storage.docker.credentials import registry_credentials
    from flowstore.storage.docker.oci import RegistryClient

    name, sep, image_digest = reference.partition("@")
    host, _, repo = name.partition("/")
    if not sep or not image_digest.startswith(_DIGEST_PREFIX) or not repo:
        raise MountError(f"{reference!r} is not REGISTRY/PATH@sha256:…: the fallback pulls by digest only")
    username, password, _ = registry_credentials(host, None)
    client = RegistryClient(host, username, password, scheme="http" if plain_http else None)
    manifest = client.manifest(repo, image_digest)  # verified against the digest
    if len(manifest.layers) != 1:
        raise MountError(f"{reference} has {len(manifest.layers)} layers; a flow image has one")
    layer = client.blob(repo, str(manifest.layers[0]["digest"]))  # verified against its digest
    _extract(layer, Path(into))
    return check_mount(into, digest)


def _extract(layer: bytes, into: Path) -> None:
    import io
    import tarfile

    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        for member in tar:
            name = posixpath.normpath(member.name.removeprefix("./")) if member.name not in (".", "./") else ""
            name = "" if name == "." else name
            if not name or member.isdir():
                continue
            if not member.isfile() or not (_safe_relative(name) or name == MANIFEST_PATH):
                raise MountError(f"the image's layer holds {member.name!r}, which a flow image never does")
            fh = tar.extractfile(member)
            data = fh.read() if fh is not None else b""
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowstore.mounted", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check the flow mounted at PATH against DIGEST")
    check.add_argument("path")
    check.add_argument("digest")
    pull = sub.add_parser("pull", help="fetch the image REFERENCE by digest into INTO, then check it")
    pull.add_argument("reference")
    pull.add_argument("digest")
    pull.add_argument("into")
    pull.add_argument("--plain-http", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            mounted = check_mount(args.path, args.digest)
        else:
            mounted = pull_into(args.reference, args.digest, args.into, plain_http=args.plain_http)
    except Exception as exc:  # one line a Pod's log shows, and a failing exit
        print(f"flowstore: {exc}", file=sys.stderr)
        return 1
    print(f"flowstore: {mounted.root} is {mounted.stored_flow} {mounted.flow_digest} ({len(mounted.files)} files "
          "checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
