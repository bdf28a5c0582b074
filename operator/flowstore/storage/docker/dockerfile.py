"""The Dockerfile and build context of a Docker storage's image (pure: no daemon, no registry).

A storage's image is its *base image* with one layer per flow on top:

1. the base, built by a daemon from :func:`render_base`: ``FROM <base image>`` (or the user's
   Dockerfile text, verbatim), the ``ENV`` lines, ``RUN python3 -m pip install ...`` (only with
   dependencies), one ``COPY`` per extra file, the vendored runtime (the installed pure-Python
   ``flowstore`` and ``cloudpickle``) and the healthcheck script under ``/opt/flowstore``
   (``PYTHONPATH=/opt/flowstore/runtime``), then the extra Dockerfile commands;
2. the flows, one layer each sorted by location, appended without a daemon
   (:mod:`flowstore.storage.docker.layers`): changing one flow changes its layer only, and nothing is
   rebuilt or re-run. The healthcheck loads every flow in a container of the base image.

:func:`render` gives the same image as one Dockerfile (one ``COPY`` per flow) for images that
are only built locally, or by another builder (:meth:`Docker.create_dockerfile_object`, with the
healthcheck as a ``RUN`` step). Contexts are deterministic tars (sorted members, fixed mtime/uid/gid/
mode), so their digest, with the Dockerfile text, identifies the build inputs.
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

from flowstore.artifacts import bundle

#: where the runtime and the healthcheck live in the image
RUNTIME_ROOT = "/opt/flowstore"
RUNTIME_PYTHONPATH = f"{RUNTIME_ROOT}/runtime"
HEALTHCHECK_PATH = f"{RUNTIME_ROOT}/healthcheck.py"
#: where the healthcheck container gets each check's flows (one directory per check)
HEALTHCHECK_WORKDIR = f"{RUNTIME_ROOT}/checks"
#: the packages copied into the runtime layer (pure Python, found where they are installed)
RUNTIME_PACKAGES = ("flowstore", "cloudpickle")
#: labels every image gets
LABEL_FLOWS = "dev.flowstore.flows"
LABEL_INPUTS = "dev.flowstore.inputs-digest"
#: the line prefix of the healthcheck's output lines
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
    ``pickle`` (an envelope), ``script`` (Python source defining a flow named `name`) or
    ``bundle`` (a flow of several files, :mod:`flowstore.artifacts.bundle`: the bundle goes to
    `location`, ``<dir>/<name>.tar.gz``, and its files, unpacked, under ``<dir>/<name>/``, so
    the flow runs in the image with its helper modules and data files beside it)."""

    name: str
    location: str
    data: bytes
    kind: str = "pickle"

    def image_files(self) -> dict[str, bytes]:
        """Every file this flow puts in the image: image path -> content."""
        files = {self.location: self.data}
        if self.kind == "bundle":
            directory = bundle_directory(self.location)
            for path, content in bundle.unpack(self.data).files.items():
                files[f"{directory}/{path}"] = content
        return files


def bundle_directory(location: str) -> str:
    """Where a bundle stored at `location` (``…/name.tar.gz``) is unpacked in the image."""
    return location.removesuffix(".tar.gz")


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
    #: every flow's location lies under this directory (a FlowStorage's image: its flows directory);
    #: None: anywhere (the seed's library use)
    flow_root: str | None = None
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


def deterministic_tar(members: Mapping[str, bytes], *, parents: bool = True,
                      directories: Mapping[str, tarfile.TarInfo] | None = None) -> bytes:
    """A deterministic tar of `members` (relative path -> content), with entries for their
    parent directories (root-owned, 0755) unless `parents` is false. `directories` (relative
    path -> a directory's tar header) adds those directories with the header's owner, mode and
    time, as a layer made by ``COPY`` carries the directories above its files."""
    dirs: dict[str, tarfile.TarInfo | None] = {}
    for name in members:
        parent = posixpath.dirname(name) if parents else ""
        while parent:
            dirs[parent] = None
            parent = posixpath.dirname(parent)
    dirs.update(directories or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([*dirs, *members]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
            if name in dirs:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                meta = dirs[name]
                if meta is not None:
                    info.mode, info.uid, info.gid = meta.mode, meta.uid, meta.gid
                    info.uname, info.gname, info.mtime = meta.uname, meta.gname, int(meta.mtime)
                tar.addfile(info)
            else:
                data = members[name]
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _base_lines(spec: ImageSpec, members: dict[str, bytes]) -> list[str]:
    """The Dockerfile lines of everything below the flows; their context files go in `members`."""
    if spec.base_image and spec.dockerfile:
        raise DockerfileError("give either a base image or a Dockerfile, not both")
    if not spec.base_image and not spec.dockerfile:
        raise DockerfileError("a base image or a Dockerfile is required")
    lines: list[str] = []
    if spec.dockerfile:
        lines.extend(spec.dockerfile.rstrip("\n").splitlines())
    else:
        assert spec.base_image is not None
        if any(c.isspace() for c in spec.base_image):
            raise DockerfileError(f"base image {spec.base_image!r} is not an image reference")
        lines.append(f"FROM {spec.base_image}")
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
    members.update({f"runtime/runtime/{k}": v for k, v in runtime_files().items()})
    members["runtime/healthcheck.py"] = HEALTHCHECK_SCRIPT.encode("utf-8")
    members["runtime/checks/README"] = b"flowstore healthchecks put the flows they load here, one directory per check\n"
    lines.append(_copy("runtime/", f"{RUNTIME_ROOT}/"))
    for command in spec.extra_dockerfile_commands:
        lines.extend(str(command).rstrip("\n").splitlines())
    return lines


def checked_flows(spec: ImageSpec) -> list[FlowFile]:
    """`spec.flows` sorted by location, each checked (absolute, unique, outside the runtime and
    every other flow's bundle directory, under `spec.flow_root` when it is set). Locations come
    from specs and from statuses (flows of the previous image): none is trusted."""
    seen: dict[str, str] = {}
    bundles: dict[str, str] = {}  # a bundle's directory in the image -> its flow
    out = []
    for flow in sorted(spec.flows, key=lambda f: f.location):
        location = _check_image_path(flow.location, f"location of flow {flow.name!r}")
        if location in seen:
            raise DockerfileError(f"flows {seen[location]!r} and {flow.name!r} have the same location {location}")
        if spec.flow_root is not None and not location.startswith(spec.flow_root.rstrip("/") + "/"):
            raise DockerfileError(f"flow {flow.name!r}: {location} is outside the flows directory {spec.flow_root}/")
        owner = next((name for directory, name in bundles.items()
                      if location == directory or location.startswith(directory + "/")), None)
        if owner is not None:
            raise DockerfileError(f"flow {flow.name!r}: {location} is inside the directory of flow {owner!r}'s files")
        if flow.kind not in ("pickle", "script", "bundle"):
            raise DockerfileError(f"flow {flow.name!r}: kind must be 'pickle', 'script' or 'bundle', not {flow.kind!r}")
        if flow.kind == "bundle" and not location.endswith(".tar.gz"):
            raise DockerfileError(f"flow {flow.name!r}: a bundle's location ends with .tar.gz, not {location}")
        if location.startswith(RUNTIME_ROOT + "/"):
            raise DockerfileError(f"flow {flow.name!r}: {location} is inside the runtime directory {RUNTIME_ROOT}")
        if flow.kind == "bundle":
            bundles[bundle_directory(location)] = flow.name
        seen[location] = flow.name
        out.append(flow)
    return out


def _digest(body: str, labels: Mapping[str, str], members: Mapping[str, bytes], spec: ImageSpec) -> str:
    digest = hashlib.sha256()
    digest.update(b"dockerfile\0" + body.encode("utf-8") + b"\0")
    digest.update(b"labels\0" + json.dumps(labels, sort_keys=True).encode("utf-8") + b"\0")
    for name in sorted(members):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(members[name]).digest())
    for key in sorted(spec.extra_inputs):
        digest.update(f"input\0{key}\0{spec.extra_inputs[key]}\0".encode())
    return digest.hexdigest()


def _context(lines: list[str], labels: Mapping[str, str], members: dict[str, bytes], spec: ImageSpec) -> BuildContext:
    body = "\n".join(lines) + "\n"
    inputs_digest = _digest(body, labels, members, spec)
    # one LABEL step, last: labels are metadata, and every step costs a commit
    dockerfile = body + _label_line({**labels, LABEL_INPUTS: inputs_digest}) + "\n"
    members["Dockerfile"] = dockerfile.encode("utf-8")
    return BuildContext(dockerfile=dockerfile, tar=deterministic_tar(members), inputs_digest=inputs_digest)


def flows_label(flows: Sequence[FlowFile]) -> str:
    """The ``dev.flowstore.flows`` label: flow name -> location, JSON."""
    return json.dumps({f.name: f.location for f in flows}, sort_keys=True)


def render_base(spec: ImageSpec) -> BuildContext:
    """The base image of `spec`: everything but the flows (base image or Dockerfile, environment,
    dependencies, files, the runtime and healthcheck, the extra commands), built by a daemon.
    The flows go on top as layers of their own (:mod:`flowstore.storage.docker.layers`), so changing a
    flow never rebuilds it (:func:`checked_flows` checks them). Raises DockerfileError on bad
    inputs."""
    members: dict[str, bytes] = {}
    lines = _base_lines(spec, members)
    return _context(lines, {}, members, spec)


def render(spec: ImageSpec, *, healthcheck: Sequence[FlowFile] | None = None,
           healthcheck_timeout: int = 60) -> BuildContext:
    """The whole image as one Dockerfile (the base, then one ``COPY`` per flow sorted by
    location, then the labels), for images built only locally and for any other builder. With
    `healthcheck` (flows already at their locations in the image: those of `spec`, and scripts
    that the files or the Dockerfile put there), a ``RUN`` step after the flows loads each of
    them with the image's Python, within `healthcheck_timeout` seconds, and fails the build if
    one does not load. Raises DockerfileError."""
    flows = checked_flows(spec)
    members: dict[str, bytes] = {}
    lines = _base_lines(spec, members)
    for flow in flows:
        for path, content in sorted(flow.image_files().items()):
            src = "flows" + path
            members[src] = content
            lines.append(_copy(src, path))
    if healthcheck:
        lines.append(healthcheck_step(healthcheck, healthcheck_timeout))
    labels = {**spec.labels, LABEL_FLOWS: flows_label(flows)}
    return _context(lines, labels, members, spec)


def healthcheck_step(flows: Sequence[FlowFile], timeout: int) -> str:
    """The Dockerfile ``RUN`` step (exec form) that loads every flow of `flows` at its location."""
    listed = [{"name": f.name, "location": _check_image_path(f.location, f"location of flow {f.name!r}"),
               "kind": f.kind} for f in sorted(flows, key=lambda f: f.location)]
    command = ["python3", "-B", HEALTHCHECK_PATH, "--image", str(int(timeout)), json.dumps(listed, sort_keys=True)]
    return "RUN " + json.dumps(command)


def healthcheck_archive(check_id: str, flows: Sequence[FlowFile]) -> bytes:
    """A tar, to extract in :data:`HEALTHCHECK_WORKDIR`, holding the directory `check_id` with
    every flow and the list the healthcheck script loads (``flows.json``)."""
    if not check_id or "/" in check_id or check_id in (".", ".."):
        raise DockerfileError(f"{check_id!r} is not a healthcheck id")
    checks = []
    members: dict[str, bytes] = {}
    for i, flow in enumerate(flows):
        file = f"flows/{i:04d}"
        members[f"{check_id}/{file}"] = flow.data
        checks.append({"name": flow.name, "location": flow.location, "kind": flow.kind, "file": file})
    members[f"{check_id}/flows.json"] = json.dumps(checks, sort_keys=True).encode("utf-8")
    return deterministic_tar(members)


def healthcheck_command(check_id: str, timeout: int) -> list[str]:
    """The command (exec'd in a healthcheck container) that checks the flows of `check_id`."""
    return ["python3", "-B", HEALTHCHECK_PATH, "--timeout", str(int(timeout)), f"{HEALTHCHECK_WORKDIR}/{check_id}"]


def healthcheck_serve_command(idle_seconds: int) -> list[str]:
    """The command of a healthcheck container: stay up until `idle_seconds` pass without a check."""
    return ["python3", "-B", HEALTHCHECK_PATH, "--serve", str(int(idle_seconds))]


#: /opt/flowstore/healthcheck.py: runs with the image's Python (only the standard library and the
#: vendored cloudpickle). ``--serve IDLE`` keeps a container alive until IDLE seconds pass without
#: a check; ``--timeout SECONDS DIR`` loads every flow listed in DIR/flows.json (each within
#: SECONDS), reports the failures and removes DIR; ``--image SECONDS JSON`` (a Dockerfile step)
#: loads the flows JSON lists (name, location, kind) from their locations in the image.
HEALTHCHECK_SCRIPT = '''\
"""flowstore image healthcheck: every flow in the image loads with this image's Python."""
import base64
import json
import os
import shutil
import signal
import sys
import time
import traceback

MARKER = "flowstore-healthcheck:"
WORKDIR = "@WORKDIR@"


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


def load_bundle(data, name, workdir):
    """Unpack a flow bundle (tar.gz, its manifest first) and import its entrypoint."""
    import gzip
    import importlib
    import io
    import tarfile

    root = os.path.join(workdir, "bundle-%d" % len(BUNDLES))
    os.makedirs(root)
    entrypoint = None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise RuntimeError("the bundle holds %r, which is not a file inside it" % member.name)
            if member.isdir():
                continue
            content = tar.extractfile(member).read()
            if member.name == ".flowstore-bundle.json":
                entrypoint = json.loads(content.decode("utf-8"))["entrypoint"]
                continue
            target = os.path.join(root, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(content)
    if not entrypoint:
        raise RuntimeError("the bundle has no manifest")
    path, _, obj = entrypoint.partition(":")
    module_name = path[:-3].replace("/", ".")
    for loaded in [k for k, m in sys.modules.items() if any(
            str(getattr(m, "__file__", None) or "").startswith(b + os.sep) for b in BUNDLES)]:
        del sys.modules[loaded]  # another flow's helpers: this flow's modules are its own
    sys.path[:] = [root] + [p for p in sys.path if p not in BUNDLES]
    BUNDLES.append(root)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        raise RuntimeError("importing %s raised %s: %s (%s, line %s)" % (
            path, type(exc).__name__, exc, last.filename.replace(root + os.sep, ""), last.lineno)) from None
    if obj:
        return getattr(module, obj)
    found = [v for k, v in vars(module).items()
             if not k.startswith("__") and not isinstance(v, type) and getattr(v, "name", None) == name]
    if not found:
        raise RuntimeError("%s defines no object whose name is %r" % (path, name))
    return found[0]


BUNDLES = []


class TookTooLong(BaseException):
    """Loading one flow took longer than its time (raised by SIGALRM)."""


def check(directory, timeout):
    """Load every flow listed in DIRECTORY/flows.json (files relative to DIRECTORY), each within
    `timeout` seconds."""
    with open(os.path.join(directory, "flows.json"), "rb") as fh:
        flows = json.loads(fh.read().decode("utf-8"))
    return check_flows(directory, flows, timeout)


def check_flows(directory, flows, timeout):
    """Load every flow of `flows` (each ``file`` relative to `directory`, or absolute)."""

    def expired(signum, frame):
        raise TookTooLong()

    signal.signal(signal.SIGALRM, expired)
    failed = 0
    for flow in flows:
        name, location, kind = flow["name"], flow["location"], flow["kind"]
        signal.alarm(timeout)
        try:
            with open(os.path.join(directory, flow["file"]), "rb") as fh:
                data = fh.read()
            if kind == "script":
                obj = load_script(data, name)
            elif kind == "bundle":
                obj = load_bundle(data, name, directory)
            else:
                obj = load_pickle(data)
            actual = getattr(obj, "name", None)
            if actual != name:
                raise RuntimeError("the loaded object's name is %r, expected %r" % (actual, name))
        except TookTooLong:
            failed += 1
            print("%s FAILED flow '%s' at %s: loading it took longer than %d s (does it wait for something "
                  "when it is loaded?)" % (MARKER, name, location, timeout), flush=True)
        except Exception as exc:
            failed += 1
            message = " ".join(str(exc).split())
            print("%s FAILED flow '%s' at %s: %s" % (MARKER, name, location, message), flush=True)
        finally:
            signal.alarm(0)
    if failed:
        print("%s %d of %d flows failed to load (Python %s)" % (MARKER, failed, len(flows), python_version()),
              flush=True)
        return 1
    print("%s %d flows load (Python %s)" % (MARKER, len(flows), python_version()), flush=True)
    return 0


def serve(idle):
    """Keep the container alive while checks arrive: each one adds (and removes) an entry in
    the work directory, which changes its modification time; exit after `idle` seconds without."""
    started = time.time()
    while time.time() - max(started, os.stat(WORKDIR).st_mtime) < idle:
        time.sleep(min(5.0, idle))
    return 0


def main(argv):
    if argv[1:2] == ["--serve"]:
        return serve(float(argv[2]))
    if argv[1:2] == ["--image"]:  # --image SECONDS JSON: a build step; the flows are at their locations
        flows = [dict(flow, file=flow["location"]) for flow in json.loads(argv[3])]
        return check_flows("/", flows, int(argv[2]))
    timeout, directory = int(argv[2]), argv[3]  # --timeout SECONDS DIRECTORY
    try:
        return check(directory, timeout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''.replace("@WORKDIR@", HEALTHCHECK_WORKDIR)
