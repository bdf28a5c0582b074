"""The Dockerfile and build context of a Docker storage's image (pure: no daemon, no registry).

The image is laid out so that rebuilding after one flow changed touches as little as possible:

1. ``FROM <base image>`` (or the user's Dockerfile text, verbatim), then the ``ENV`` lines;
2. ``RUN python3 -m pip install ...`` in its own layer (only when there are dependencies);
3. one ``COPY`` per extra file;
4. the vendored runtime (the installed pure-Python ``flowstore`` and ``cloudpickle``) and the
   healthcheck script under ``/opt/flowstore`` (``PYTHONPATH=/opt/flowstore/runtime``);
5. one ``COPY`` per flow, sorted by location: changing one flow only changes its layer and the
   (cheap) ``COPY`` layers after it; identical files give identical layers;
6. the extra Dockerfile commands and the healthcheck (``RUN python3
   /opt/flowstore/healthcheck.py``) which loads every flow with the image's own Python;
7. one ``LABEL`` line: ``dev.flowstore.flows`` (flow name -> location, JSON) and
   ``dev.flowstore.inputs-digest``.

The context tar is deterministic (sorted members, fixed mtime/uid/gid/mode), so its digest,
together with the Dockerfile text, identifies the build inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

#: where the runtime and the healthcheck live in the image
RUNTIME_ROOT = "/opt/flowstore"
RUNTIME_PYTHONPATH = f"{RUNTIME_ROOT}/runtime"
HEALTHCHECK_PATH = f"{RUNTIME_ROOT}/healthcheck.py"
HEALTHCHECK_FLOWS_PATH = f"{RUNTIME_ROOT}/flows.json"
#: the packages copied into the runtime layer (pure Python, found where they are installed)
RUNTIME_PACKAGES = ("flowstore", "cloudpickle")
#: labels every image gets
LABEL_FLOWS = "dev.flowstore.flows"
LABEL_INPUTS = "dev.flowstore.inputs-digest"
#: the line prefix of healthcheck failures in the build log
HEALTHCHECK_MARKER = "flowstore-healthcheck:"
#: the fixed modification time of every context member (2000-01-01T00:00:00Z)
FIXED_MTIME = 946684800
#: prefix of the dependency install step, so a failing step can be recognised in the build log
PIP_INSTALL = "PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --no-cache-dir"

_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


class DockerfileError(ValueError):
    """The image description cannot be rendered (conflicting or malformed inputs)."""


@dataclasses.dataclass(frozen=True)
class FlowFile:
    """One flow in the image: `data` goes to the absolute path `location`. `kind` is
    ``pickle`` (an envelope) or ``script`` (Python source defining a flow named `name`)."""

    name: str
    location: str
    data: bytes
    kind: str = "pickle"


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Everything an image is built from."""

    base_image: str | None = None
    dockerfile: str | None = None
    env_vars: Mapping[str, str] = dataclasses.field(default_factory=dict)
    python_dependencies: Sequence[str] = ()
    #: image path -> content
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    flows: Sequence[FlowFile] = ()
    extra_dockerfile_commands: Sequence[str] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ignore_healthchecks: bool = False
    vendor_runtime: bool = True
    #: other inputs that change the image without being in the Dockerfile (build args, target,
    #: platform); they enter the inputs digest only
    extra_inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BuildContext:
    dockerfile: str
    #: the context as an uncompressed tar holding ``Dockerfile`` and everything it copies
    tar: bytes
    #: sha256 hex of every build input (Dockerfile without its final LABEL line, the labels,
    #: context files, extra inputs); also written to the ``dev.flowstore.inputs-digest`` label
    inputs_digest: str

    @property
    def context_digest(self) -> str:
        return hashlib.sha256(self.tar).hexdigest()


def _check_image_path(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise DockerfileError(f"{what} {path!r} must be an absolute path in the image")
    norm = posixpath.normpath(path)
    if norm != path or path.endswith("/") or "\n" in path or '"' in path:
        raise DockerfileError(f"{what} {path!r} must be a normalized absolute file path (no '..', '//', quotes)")
    return norm


def _copy(src: str, dest: str) -> str:
    return "COPY " + json.dumps([src, dest])


def _env_line(env: Mapping[str, str]) -> str:
    parts = []
    for name in sorted(env):
        if not name or any(c in name for c in " =\n\t\"'$"):
            raise DockerfileError(f"environment variable name {name!r} is not valid")
        value = str(env[name])
        if "\n" in value:
            raise DockerfileError(f"environment variable {name!r} has a newline in its value")
        # a double-quoted value: keeps spaces; `$VAR` still expands (the seed's PYTHONPATH idiom)
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{name}="{escaped}"')
    return "ENV " + " ".join(parts)


def _label_line(labels: Mapping[str, str]) -> str:
    return "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(str(labels[k]))}" for k in sorted(labels))


def runtime_files() -> dict[str, bytes]:
    """The installed runtime packages: path relative to the runtime dir -> content."""
    out: dict[str, bytes] = {}
    for package in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise DockerfileError(f"the runtime package {package!r} is not installed as a package directory")
        root = Path(locations[0])
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file() or path.suffix in _SKIP_SUFFIXES:
                continue
            out[f"{package}/{rel.as_posix()}"] = path.read_bytes()
    return out


def _tar(members: Mapping[str, bytes]) -> bytes:
    """A deterministic tar of `members` (relative path -> content), with parent directories."""
    dirs: set[str] = set()
    for name in members:
        parent = posixpath.dirname(name)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([*dirs, *members]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
            if name in dirs:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = members[name]
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def render(spec: ImageSpec) -> BuildContext:
    """The Dockerfile and context tar for `spec`. Raises DockerfileError on bad inputs."""
    if spec.base_image and spec.dockerfile:
        raise DockerfileError("give either a base image or a Dockerfile, not both")
    if not spec.base_image and not spec.dockerfile:
        raise DockerfileError("a base image or a Dockerfile is required")
    members: dict[str, bytes] = {}
    lines: list[str] = []
    if spec.dockerfile:
        lines.extend(spec.dockerfile.rstrip("\n").splitlines())
    else:
        assert spec.base_image is not None
        if any(c.isspace() for c in spec.base_image):
            raise DockerfileError(f"base image {spec.base_image!r} is not an image reference")
        lines.append(f"FROM {spec.base_image}")
    if spec.vendor_runtime:
        lines.append(_env_line({"PYTHONPATH": RUNTIME_PYTHONPATH}))
    if spec.env_vars:
        # a line of its own: the user's values may extend ours (`PYTHONPATH=$PYTHONPATH:/modules`)
        lines.append(_env_line(spec.env_vars))
    deps = [str(d) for d in spec.python_dependencies]
    if deps:
        for dep in deps:
            if not dep or "\n" in dep:
                raise DockerfileError(f"python dependency {dep!r} is not valid")
        lines.append(f"RUN {PIP_INSTALL} " + " ".join(json.dumps(d) for d in deps))
    for i, path in enumerate(sorted(spec.files)):
        dest = _check_image_path(path, "file")
        src = f"files/{i:04d}{posixpath.splitext(dest)[1]}"
        members[src] = bytes(spec.files[path])
        lines.append(_copy(src, dest))
    runtime: dict[str, bytes] = {}
    if spec.vendor_runtime:
        runtime = {f"runtime/runtime/{k}": v for k, v in runtime_files().items()}
    if not spec.ignore_healthchecks:
        runtime["runtime/healthcheck.py"] = HEALTHCHECK_SCRIPT.encode("utf-8")
    if runtime:
        members.update(runtime)
        lines.append(_copy("runtime/", f"{RUNTIME_ROOT}/"))
    seen: dict[str, str] = {}
    for flow in sorted(spec.flows, key=lambda f: f.location):
        location = _check_image_path(flow.location, f"location of flow {flow.name!r}")
        if location in seen:
            raise DockerfileError(f"flows {seen[location]!r} and {flow.name!r} have the same location {location}")
        if flow.kind not in ("pickle", "script"):
            raise DockerfileError(f"flow {flow.name!r}: kind must be 'pickle' or 'script', not {flow.kind!r}")
        if location.startswith(RUNTIME_ROOT + "/"):
            raise DockerfileError(f"flow {flow.name!r}: {location} is inside the runtime directory {RUNTIME_ROOT}")
        seen[location] = flow.name
        src = "flows" + location
        members[src] = flow.data
        lines.append(_copy(src, location))
    for command in spec.extra_dockerfile_commands:
        lines.extend(str(command).rstrip("\n").splitlines())
    labels = dict(spec.labels)
    labels.setdefault(LABEL_FLOWS, json.dumps({f.name: f.location for f in spec.flows}, sort_keys=True))
    if not spec.ignore_healthchecks:
        checks = [{"name": f.name, "location": f.location, "kind": f.kind} for f in sorted(spec.flows,
                                                                                        key=lambda f: f.location)]
        members["healthcheck/flows.json"] = json.dumps(checks, sort_keys=True).encode("utf-8")
        lines.append(_copy("healthcheck/flows.json", HEALTHCHECK_FLOWS_PATH))
        lines.append(f"RUN python3 -B {HEALTHCHECK_PATH} {HEALTHCHECK_FLOWS_PATH}")
    body = "\n".join(lines) + "\n"
    digest = hashlib.sha256()
    digest.update(b"dockerfile\0" + body.encode("utf-8") + b"\0")
    digest.update(b"labels\0" + json.dumps(labels, sort_keys=True).encode("utf-8") + b"\0")
    for name in sorted(members):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(members[name]).digest())
    for key in sorted(spec.extra_inputs):
        digest.update(f"input\0{key}\0{spec.extra_inputs[key]}\0".encode())
    inputs_digest = digest.hexdigest()
    # one LABEL step, last: labels are metadata, and every step costs a commit
    dockerfile = body + _label_line({**labels, LABEL_INPUTS: inputs_digest}) + "\n"
    members["Dockerfile"] = dockerfile.encode("utf-8")
    return BuildContext(dockerfile=dockerfile, tar=_tar(members), inputs_digest=inputs_digest)


#: /opt/flowstore/healthcheck.py: runs with the image's Python (only the standard library and the
#: vendored cloudpickle); loads every flow listed in flows.json and reports the failures.
HEALTHCHECK_SCRIPT = '''\
"""flowstore image healthcheck: every flow in the image loads with this image's Python."""
import base64
import json
import sys
import traceback

MARKER = "flowstore-healthcheck:"


def python_version():
    return "{}.{}.{}".format(*sys.version_info[:3])


def load_pickle(data):
    versions = {}
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "flow" in doc:
        pickled = base64.b64decode(doc["flow"])
        versions = dict(doc.get("versions") or {})
    elif data[:1] == b"\\x80":
        pickled = data
    else:
        raise ValueError("not a flow envelope (expected JSON with 'flow' and 'versions')")
    try:
        import cloudpickle
    except ImportError as exc:
        raise RuntimeError("cloudpickle is not importable in the image: %s" % exc) from None
    try:
        return cloudpickle.loads(pickled)
    except Exception as exc:
        mine = "image Python %s, cloudpickle %s" % (python_version(), getattr(cloudpickle, "__version__", "?"))
        theirs = "stored with Python %s, cloudpickle %s" % (
            versions.get("python", "?"), versions.get("cloudpickle", "?"))
        raise RuntimeError("cannot unpickle: %s: %s (%s; %s)" % (type(exc).__name__, exc, mine, theirs)) from None


def load_script(data, name):
    namespace = {"__name__": "__flowstore_healthcheck__"}
    try:
        exec(compile(data, "<flow script>", "exec"), namespace)
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        raise RuntimeError("the script raised %s: %s (line %s)" % (type(exc).__name__, exc, last.lineno)) from None
    found = [v for k, v in namespace.items()
             if not k.startswith("__") and not isinstance(v, type) and getattr(v, "name", None) == name]
    if not found:
        raise RuntimeError("the script defines no object whose name is %r" % name)
    return found[0]


def main(argv):
    with open(argv[1], "rb") as fh:
        flows = json.loads(fh.read().decode("utf-8"))
    failed = 0
    for flow in flows:
        name, location, kind = flow["name"], flow["location"], flow["kind"]
        try:
            with open(location, "rb") as fh:
                data = fh.read()
            if kind == "script":
                obj = load_script(data, name)
            else:
                obj = load_pickle(data)
            actual = getattr(obj, "name", None)
            if actual != name:
                raise RuntimeError("the loaded object's name is %r, expected %r" % (actual, name))
        except Exception as exc:
            failed += 1
            message = " ".join(str(exc).split())
            print("%s FAILED flow '%s' at %s: %s" % (MARKER, name, location, message), flush=True)
    if failed:
        print("%s %d of %d flows failed to load (Python %s)" % (MARKER, failed, len(flows), python_version()),
              flush=True)
        return 1
    print("%s %d flows load (Python %s)" % (MARKER, len(flows), python_version()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''
