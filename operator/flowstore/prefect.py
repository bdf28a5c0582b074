"""Prefect 3 runs flows that flowstore stored: a ``RunnerStorage`` and a deployment pull step.

    from prefect import flow
    from flowstore.prefect import FlowstoreStorage

    flow.from_source(FlowstoreStorage("etl-daily", "data"), entrypoint="etl_daily.py:flow").deploy(
        "etl-daily", work_pool_name="k8s")

or, in ``prefect.yaml`` (``flowstore locate etl-daily -n data -o prefect-pull-step`` prints it):

    pull:
      - flowstore.prefect.pull_flow: {name: etl-daily, namespace: data, digest: "sha256:…"}

Both turn a StoredFlow into a directory Prefect loads the entrypoint from, in this order and
before anything of the flow executes: read the StoredFlow and parse its status (in-cluster or
KUBECONFIG; a malformed status is refused naming the field), refuse pickles (Prefect 3 imports
code from files), verify the signed statement of the revision when the agent has a key
(``flowstore.client.verify_statement``, docs/security.md: an older designation than one this
worker verified is refused), check that the (signed) status points where the agent trusts
(``flowstore.client.check_location``: the FlowStorage's spec, or ``FLOWSTORE_TRUSTED_STORAGES``;
nothing carrying the worker's credentials is sent anywhere else), take the artifact from the
agent cache or download it (bounded by its recorded size, sha256-verified), then write it as
files: a script under its own file name (``status.artifact.fileName``), a bundle's files checked
against its manifest (``flowstore.artifacts.bundle.unpack``).

The cache is the agent cache of ``flowstore.client`` (``flowstore.artifacts.cache``,
``$FLOWSTORE_CACHE_DIR``): verified artifact bytes by digest, rehashed on every use, filled once
among several processes, bounded by ``FLOWSTORE_CACHE_MAX_BYTES``. A pull pins the digest it
prepared for as long as its process runs (the flow run), so a prune never evicts what a running
flow was pulled from; a runner's pin moves with its revision.

The directory handed to Prefect is a fresh working copy written from those verified bytes, never
the cache itself: Prefect makes it the flow run's working directory (``os.chdir``), where flows
write their outputs and ``.pyc`` files, and ``from_source`` deletes its base path afterwards; a
shared cache directory would be altered by one run and served to the next.

Mirrors Prefect's own code (3.9.1, also the same protocol in 2.20): ``RunnerStorage``,
``GitRepository`` and ``RemoteStorage`` in ``src/prefect/runner/storage.py`` (a destination under
the base path whose name does not change between pulls, since ``RunnerDeployment`` records it as
``$STORAGE_BASE_PATH/<name>``; ``to_pull_step`` with block placeholders, never secret values), and
``git_clone`` / ``pull_from_remote_storage`` in ``src/prefect/deployments/steps/pull.py`` (steps are
imported by dotted path and called with the YAML's keys as keyword arguments; the returned
``directory`` becomes the working directory the entrypoint is resolved in,
``load_flow_from_flow_run`` in ``src/prefect/flows.py``).

Nothing here imports Prefect at module level: flowstore's own tools import this module without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from flowstore import client, kubeconfig, mounted
from flowstore.agent import snapshot
from flowstore.agent.status import StoredFlowView
from flowstore.artifacts import bundle
from flowstore.artifacts.cache import Cache, Settings
from flowstore.artifacts.signing import SignatureError

#: the pull step's dotted name, as prefect.yaml and a deployment's ``pull_steps`` spell it
PULL_STEP = "flowstore.prefect.pull_flow"
#: formats Prefect can load: files it imports its entrypoint from
FORMATS = ("script", "bundle")

_log = logging.getLogger(__name__)


class NotForPrefect(ValueError):
    """The StoredFlow is stored in a form Prefect cannot import its entrypoint from (a pickle)."""


# ---------------------------------------------------------------------- what a pull prepared
@dataclasses.dataclass(frozen=True)
class PreparedFlow:
    """A StoredFlow written out as a directory: which one, at which exact revision, and where."""

    namespace: str
    name: str
    digest: str
    format: str
    directory: Path
    #: a bundle's entrypoint (``path.py:object``), or a script's file name
    entrypoint: str
    #: the pinned commit, on git-hosted storages
    commit: str | None = None
    #: True when this pull downloaded the artifact, False when the cache had it
    downloaded: bool = False
    #: True when a signature was checked against the agent's key
    signature_verified: bool = False

    @property
    def storedflow(self) -> str:
        return f"{self.namespace}/{self.name}"

    def summary(self) -> str:
        """One log line naming the exact code: the verified digest (and commit)."""
        commit = f", git commit {self.commit}" if self.commit else ""
        signed = " and signature" if self.signature_verified else ""
        source = "downloaded" if self.downloaded else "from the cache"
        return (f"flowstore: StoredFlow {self.storedflow} at {self.digest} ({self.format} {self.entrypoint}{commit}): "
                f"sha256{signed} verified, {source}, written to {self.directory}")

    def labels(self) -> dict[str, str]:
        """What a flow run records about its code (Prefect flow-run labels)."""
        labels = {"flowstore.storedflow": self.storedflow, "flowstore.digest": self.digest,
                  "flowstore.format": self.format}
        if self.commit:
            labels["flowstore.git.commit"] = self.commit
        return labels

    def outputs(self) -> dict[str, Any]:
        """The pull step's return value: ``directory`` (Prefect changes into it), and the
        revision, for later steps' templates (``{{ digest }}``)."""
        return {"directory": str(self.directory), "digest": self.digest, "commit": self.commit,
                "storedflow": self.storedflow, "entrypoint": self.entrypoint, "format": self.format}


def prepare(name: str, namespace: str, destination: Path, *, signing_key: bytes | str | None = None,
            verify_key: str | None = None, api: Any = None, cache: Cache | Path | None = None,
            unchanged: PreparedFlow | None = None,
            log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
            identity: Mapping[str, Any] | None = None, revision: int | None = None,
            digest: str | None = None, carried: Mapping[str, Any] | None = None) -> PreparedFlow:
    """Write the StoredFlow `namespace`/`name` into `destination` (replaced whole), verified;
    with `revision` or `digest`, that revision of its status.history (``client.read``); with
    `carried` (a self-contained step's snapshot, ``flowstore.agent.snapshot``), that revision with
    no Kubernetes API: its place checked against ``FLOWSTORE_TRUSTED_STORAGES`` or the verified
    signed statement instead of the FlowStorage.

    `cache`: the agent cache (or its root directory; default the environment's). `unchanged`:
    what an earlier pull into the same destination prepared; when the StoredFlow still has that
    digest, the directory is left as it is (a runner's periodic pull does not swap the files of a
    running flow for identical ones)."""
    log = log or _log
    has_keys = client.has_keys(verify_key, signing_key)  # set but empty: refused before anything is read
    if carried is not None:
        view = client.carried_view(name, namespace, carried, revision=revision, digest=digest)
    else:
        api = api or client.cluster_api()
        view = client.read(name, namespace, api=api, revision=revision, digest=digest)
    artifact = view.artifact
    if artifact.format == "pickle":
        raise NotForPrefect(
            f"{view.what} is stored as a pickle; Prefect 3 imports a flow from its files. Store it as a script or a "
            f"bundle (spec.storedAsScript: true on the StoredFlow or its FlowStorage) and point the deployment's "
            f"entrypoint at the file (e.g. {artifact.file_name or 'flow.py'}:flow)")
    pulled, commit = artifact.digest, view.git_commit
    log.info("flowstore: pulling StoredFlow %s/%s at %s%s", namespace, name, pulled,
             f" (git commit {commit})" if commit else "")
    # a revision or digest asked for is a deliberate rollback: an older designation is allowed
    checked = client.verify_statement(view, verify_key=verify_key, signing_key=signing_key,
                                      pinned=revision is not None or digest is not None or carried is not None
                                      ) if has_keys else None
    verified = checked is not None
    if not verified and artifact.signature:
        log.warning("flowstore: %s is signed but this worker has no key, so only its sha256 is checked; set "
                    "FLOWSTORE_VERIFY_KEY to the FlowStorage's public key to check the signature too", view.what)
    located = client.check_location(view, api=api, checked=checked,
                                    sources=snapshot.sources(checked) if carried is not None else None)
    entrypoint = _script_name(view) if artifact.format == "script" else str(artifact.entrypoint or "")
    if (unchanged is not None and unchanged.digest == pulled and unchanged.directory == destination
            and destination.is_dir()):
        return dataclasses.replace(unchanged, downloaded=False, signature_verified=verified)
    agent_cache = cache if isinstance(cache, Cache) else Cache(Settings(root=cache)) if cache else Cache()
    data, downloaded = client.fetch(located, cache=agent_cache, pin=True,  # pinned while this process runs
                                    identity=identity)
    if unchanged is not None and unchanged.digest != pulled:
        agent_cache.release(unchanged.digest)  # a runner moved on: its previous revision may go
    if artifact.format == "bundle":
        unpacked = bundle.unpack(data)  # bounded; every file checked against the manifest
        entrypoint = str(unpacked.entrypoint)
        _replace_directory(destination, lambda staging: bundle.extract(unpacked, str(staging)))
    else:
        def write_script(staging: Path) -> None:
            (staging / entrypoint).write_bytes(data)

        _replace_directory(destination, write_script)
    return PreparedFlow(namespace=namespace, name=name, digest=pulled, format=artifact.format,
                        directory=destination, entrypoint=entrypoint, commit=commit, downloaded=downloaded,
                        signature_verified=verified)


def _script_name(view: StoredFlowView) -> str:
    """The file a script is written as: its source's own name (status.artifact.fileName: the
    ConfigMap key, the git path's base name, ``flow.py`` for inline sources)."""
    name = os.path.basename(view.artifact.file_name or "flow.py")
    bundle.check_path(name)  # no "..", no NUL, not the manifest's name
    return name


def _replace_directory(destination: Path, fill: Callable[[Path], None]) -> None:
    """Fill a new directory beside `destination`, then put it in its place; whatever was there
    before (an earlier revision, files a run wrote) goes."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    old = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        fill(staging)
        staging.chmod(0o755)
        if destination.exists():
            destination.rename(old)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- the pull step
def pull_step(name: str, namespace: str, *, require_signature: bool = False,
              signing_key: str | None = None, verify_key: str | None = None, digest: str | None = None,
              carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The deployment pull step for a StoredFlow (one entry of ``pull:`` / ``pull_steps``).
    `signing_key` is a template (``{{ prefect.blocks.secret.NAME }}``), never a key; `verify_key`
    an ed25519 public key (PEM text, or a path on the worker): public, so it may be written down.
    `digest`: the revision every run of the deployment loads (None: the current one at run time);
    `carried`: a self-contained step's snapshot of that revision (``flowstore.agent.snapshot``)."""
    inputs: dict[str, Any] = {"name": name, "namespace": namespace}
    if digest is not None:
        inputs["digest"] = digest
    if verify_key is not None:
        inputs["verify_key"] = verify_key
    elif signing_key is not None:
        inputs["signing_key"] = signing_key
    elif require_signature:
        inputs["require_signature"] = True
    if carried is not None:
        inputs["self_contained"] = dict(carried)
    return {PULL_STEP: inputs}


def pull_step_yaml(view: StoredFlowView, *, track_latest: bool = False, self_contained: bool = False) -> str:
    """``flowstore locate -o prefect-pull-step``: the pull step as YAML, for ``pull:`` in
    prefect.yaml and for prefect-operator's ``PrefectDeployment`` ``pullSteps``, with comments
    naming the revision it loads and the entrypoint to give the deployment: a bundle's own, or
    a script's file with the StoredFlow's ``spec.objectName`` (without one, the variable is left
    for the reader to name: nothing here runs the script to find it).

    Pinned by default: the step names `view`'s digest, so every run of the deployment (and every
    retry of a run) loads that revision. `track_latest`: the step names none, and each fresh run
    loads the revision current when it starts (its retries keep it). `self_contained`: the step
    also carries the revision's artifact, storage and signature, for workers without the
    Kubernetes API."""
    name, namespace, artifact = view.name, view.namespace, view.artifact
    fmt = artifact.format
    if fmt not in FORMATS:
        raise NotForPrefect(f"StoredFlow {namespace}/{name} is stored as a {fmt}; Prefect 3 imports a flow from its "
                            "files: set spec.storedAsScript: true (a script or a bundle), then print the pull step")
    if track_latest and self_contained:
        raise ValueError("--self-contained carries one revision, so it cannot --track-latest: drop one of the two")
    if fmt == "bundle":
        entrypoint = str(artifact.entrypoint)
    elif view.object_name:
        entrypoint = f"{_script_name(view)}:{view.object_name}"
    else:
        entrypoint = (f"{_script_name(view)}:FLOW  (FLOW: the variable holding your @flow; set the "
                      "StoredFlow's spec.objectName to have it printed here)")
    commit = view.git_commit
    revision = view.status.get("artifact", {}).get("revision")
    lines = [f"# StoredFlow {namespace}/{name}: {fmt}, revision {revision}, {artifact.digest}"
             + (f" (git commit {commit})" if commit else "")]
    if track_latest:
        lines.append("# tracks the latest: each new run pulls the StoredFlow's current revision, verified (its retries "
                     "keep the one it started with); its digest is logged and labelled")
    else:
        lines.append("# pinned: every run and retry pulls this revision, verified; print the step again (or pass "
                     "--track-latest) to move on")
    if self_contained:
        lines.append("# self-contained: the worker needs no Kubernetes API, only its own storage credentials and "
                     "FLOWSTORE_TRUSTED_STORAGES or the FlowStorage's key (docs/prefect.md)")
    lines.append(f"# deployment entrypoint: {entrypoint}")
    step = pull_step(name, namespace, require_signature=bool(artifact.signature),
                     digest=None if track_latest else artifact.digest,
                     carried=snapshot.snapshot(view) if self_contained else None)
    return "\n".join(lines) + "\n" + yaml.safe_dump([step], sort_keys=False, default_flow_style=False)


#: a per-run override of the revision: set as a job variable (``env``) of one flow run
RUN_DIGEST_ENV = "FLOWSTORE_RUN_DIGEST"
RUN_REVISION_ENV = "FLOWSTORE_RUN_REVISION"


def pull_flow(name: str, namespace: str | None = None, signing_key: str | None = None,
              require_signature: bool = False, identity: dict[str, Any] | None = None,
              verify_key: str | None = None, digest: str | None = None, revision: int | None = None,
              self_contained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deployment pull step: write the StoredFlow `name` into the working directory, verified.

        pull:
          - flowstore.prefect.pull_flow:
              name: etl-daily
              namespace: data                      # default: the worker's namespace
              digest: "sha256:…"                   # the revision every run loads (or revision: 3);
                                                   # without either, the current one at run time
              require_signature: true              # key from FLOWSTORE_VERIFY_KEY, or:
              # verify_key: /etc/flowstore/flowstore.pub  (the FlowStorage's public key, or its PEM)
              # signing_key: "{{ prefect.blocks.secret.NAME }}"  (an HMAC key: the weaker kind)
              identity: {}                         # reach the storage as this Pod's ServiceAccount
                                                   # (flowstore.workload; e.g. {roleARN: …})
              # self_contained: {uid: …, status: …}  (printed by --self-contained: no Kubernetes API)

    Which revision runs, first match wins: the digest this flow run already recorded (its
    ``flowstore.digest`` label: a retried or rescheduled run loads what its first attempt
    loaded, never a newer one); ``FLOWSTORE_RUN_DIGEST`` or ``FLOWSTORE_RUN_REVISION`` in the
    run's environment (a job variable: one run on demand); the step's `digest` or `revision`;
    the current one. A revision not in the history fails before any flow code, naming those there are.

    Returns ``directory`` (absolute: Prefect changes into it and resolves the entrypoint there),
    ``digest``, ``commit``, ``storedflow``, ``entrypoint`` and ``format``. The revision is
    logged to the flow run (its logs in the Prefect API) and set as the run's labels
    ``flowstore.digest``, ``flowstore.storedflow``, ``flowstore.format`` (``flowstore.git.commit``)."""
    namespace = namespace or kubeconfig.current_namespace()
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")  # set by Prefect's workers and runners
    log = _flow_run_logger(flow_run_id)
    try:
        if require_signature and not client.has_keys(verify_key, signing_key):
            raise SignatureError(
                f"the pull step of StoredFlow {namespace}/{name} requires a signed artifact, but this worker has no "
                "key: set FLOWSTORE_VERIFY_KEY (the FlowStorage's public key) in its environment, or give the step "
                "verify_key: (the key, or its file)")
        digest, revision = _run_revision(flow_run_id, f"{namespace}/{name}", digest, revision, log)
        prepared = prepare(name, namespace, Path.cwd() / _directory_name(namespace, name), signing_key=signing_key,
                           verify_key=verify_key, log=log, identity=identity, revision=revision, digest=digest,
                           carried=self_contained)
    except Exception as exc:
        log.error("flowstore: not running StoredFlow %s/%s: %s", namespace, name, exc)
        raise
    log.info("%s", prepared.summary())
    if flow_run_id:
        _label_flow_run(flow_run_id, prepared.labels(), log)
    return prepared.outputs()


def _run_revision(flow_run_id: str | None, storedflow: str, digest: str | None, revision: int | None,
                  log: logging.Logger | logging.LoggerAdapter[Any]) -> tuple[str | None, int | None]:
    """The (digest, revision) this flow run loads (:func:`pull_flow`'s order)."""
    recorded = _recorded_digest(flow_run_id, storedflow) if flow_run_id else None
    if recorded:
        log.info("flowstore: flow run %s already recorded %s for StoredFlow %s (an earlier attempt): loading that "
                 "revision again, whatever is current now", flow_run_id, recorded, storedflow)
        return recorded, None
    run_digest, run_revision = os.environ.get(RUN_DIGEST_ENV), os.environ.get(RUN_REVISION_ENV)
    if run_digest:
        log.info("flowstore: this run asks for %s (%s)", run_digest, RUN_DIGEST_ENV)
        return run_digest, None
    if run_revision:
        try:
            number = int(run_revision)
        except ValueError:
            raise ValueError(f"{RUN_REVISION_ENV} is {run_revision[:40]!r}, not a revision number "
                             "(`flowstore history NAME` lists them)") from None
        log.info("flowstore: this run asks for revision %s (%s)", number, RUN_REVISION_ENV)
        return None, number
    return digest, revision


def _recorded_digest(flow_run_id: str, storedflow: str) -> str | None:
    """The ``flowstore.digest`` label an earlier attempt of this flow run recorded for
    `storedflow`, or None (a first attempt; Prefect 2, whose runs have no labels). A run whose
    labels cannot be read is not run: it could be a retry that must not switch code."""
    try:
        from prefect.client.orchestration import get_client
    except ImportError:  # pragma: no cover - the pull step runs inside Prefect
        return None
    try:
        with get_client(sync_client=True) as prefect_client:
            flow_run = prefect_client.read_flow_run(uuid.UUID(flow_run_id))
    except Exception as exc:
        raise RuntimeError(f"cannot read flow run {flow_run_id} from the Prefect API ({str(exc)[:200]}), so cannot "
                           "tell whether an earlier attempt recorded a revision; not running") from None
    labels = getattr(flow_run, "labels", None) or {}
    if labels.get("flowstore.storedflow") != storedflow:
        return None
    recorded = labels.get("flowstore.digest")
    return str(recorded) if recorded else None


def _directory_name(namespace: str, name: str) -> str:
    # Namespaces are DNS labels (no "_"): "ns_name" is unambiguous.
    return f"{namespace}_{name}"


def _flow_run_logger(flow_run_id: str | None) -> logging.Logger | logging.LoggerAdapter[Any]:
    """Prefect's API log handler ships records of ``prefect.flow_runs`` that carry a flow run id
    (what ``prefect.logging.loggers.flow_run_logger`` attaches), so these lines are part of the
    run's logs in the Prefect API, not only the worker's output."""
    if not flow_run_id:
        return _log
    return logging.LoggerAdapter(logging.getLogger("prefect.flow_runs"),
                                 {"flow_run_id": flow_run_id, "flow_run_name": flow_run_id, "flow_name": "-"})


def _label_flow_run(flow_run_id: str, labels: dict[str, str], log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Record the revision on the flow run itself (``PATCH /flow_runs/{id}/labels``, Prefect >= 3.1);
    best effort: the run's logs already name it."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as prefect_client:
            update = getattr(prefect_client, "update_flow_run_labels", None)
            if update is None:  # Prefect 2: runs have no labels
                return
            update(uuid.UUID(flow_run_id), labels)
    except Exception as exc:  # never fail a run over its labels
        log.warning("flowstore: could not label flow run %s with its revision: %s", flow_run_id, exc)


# ---------------------------------------------------------------------- the RunnerStorage
class FlowstoreStorage:
    """Prefect's ``RunnerStorage`` for a StoredFlow, for ``flow.from_source``, ``Runner`` and
    ``.deploy()`` (which records :meth:`to_pull_step`, so workers pull the same StoredFlow).

    `namespace`: default the current one (the Pod's, else the kubeconfig context's), resolved
    now so the deployment names it. `verify_key`: the FlowStorage's ed25519 public key (PEM text,
    or a file's path), written into the pull step as it is (it is public); without one,
    ``$FLOWSTORE_VERIFY_KEY``. `signing_key`: an HMAC key (the weaker kind), or a saved Prefect
    ``Secret`` block (the pull step then names the block); without one, ``$FLOWSTORE_SIGNING_KEY``.
    A key that is not a block never goes into the deployment: its pull step then requires the
    worker to have a key. `pull_interval`: seconds between a runner's pulls (None: once).
    `track_latest`: the recorded pull step names no digest (each run loads the current revision)."""

    def __init__(self, name: str, namespace: str | None = None, *, signing_key: Any = None,
                 verify_key: str | None = None, pull_interval: int | None = 60, track_latest: bool = False) -> None:
        self._track_latest = track_latest
        self._name = name
        self._namespace = namespace or kubeconfig.current_namespace()
        self._signing_key = signing_key
        self._verify_key = verify_key
        self._pull_interval = pull_interval
        self._base_path = Path.cwd()
        self._prepared: PreparedFlow | None = None

    def set_base_path(self, path: Path) -> None:
        self._base_path = Path(path)

    @property
    def pull_interval(self) -> int | None:
        return self._pull_interval

    @property
    def destination(self) -> Path:
        return self._base_path / _directory_name(self._namespace, self._name)

    @property
    def prepared(self) -> PreparedFlow | None:
        """What the last :meth:`pull_code` prepared (digest, commit, directory)."""
        return self._prepared

    async def pull_code(self) -> None:
        self._prepared = await asyncio.to_thread(self._pull)

    def _pull(self) -> PreparedFlow:
        prepared = prepare(self._name, self._namespace, self.destination, signing_key=self._key_value(),
                           verify_key=self._verify_key, unchanged=self._prepared)
        _log.info("%s", prepared.summary())
        return prepared

    def _key_value(self) -> bytes | str | None:
        key = self._signing_key
        if key is None or isinstance(key, bytes | str):
            return key
        value = key.get()  # a prefect.blocks.system.Secret
        return value if isinstance(value, bytes | str) else str(value)

    def to_pull_step(self) -> dict[str, Any]:
        """The step ``.deploy()`` records: pinned to the digest this storage pulled (the code the
        deployment was made from), unless `track_latest`."""
        digest = None if self._track_latest or self._prepared is None else self._prepared.digest
        if self._verify_key is not None:  # a public key: written into the deployment as it is
            return pull_step(self._name, self._namespace, verify_key=self._verify_key, digest=digest)
        key = self._signing_key
        if key is not None and hasattr(key, "get_block_placeholder"):
            # a saved Secret block: the worker resolves it (raises BlockNotSavedError if unsaved)
            return pull_step(self._name, self._namespace, signing_key=f"{{{{ {key.get_block_placeholder()} }}}}",
                             digest=digest)
        return pull_step(self._name, self._namespace, require_signature=client.has_keys(None, self._key_value()),
                         digest=digest)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FlowstoreStorage) and self._name == other._name
                and self._namespace == other._namespace)

    def __hash__(self) -> int:
        return hash((FlowstoreStorage, self._name, self._namespace))

    def __repr__(self) -> str:
        return f"FlowstoreStorage(name={self._name!r}, namespace={self._namespace!r})"


# ---------------------------------------------------------------------- a flow mounted from its image
def use_mounted_flow(path: str, digest: str, directory: str | None = None) -> dict[str, Any]:
    """Deployment pull step for a flow mounted from its OCI image (docs/oci-volumes.md):
    :func:`flowstore.mounted.use_mounted_flow`, which needs no credentials, no Kubernetes API and
    no network, with its outcome logged to the flow run as :func:`pull_flow` logs its own. A
    refused mount (empty, another image than the digest, altered) is then in the run's logs in
    the Prefect API, not only in the Pod's output.

        pull:
          - flowstore.prefect.use_mounted_flow: {path: /flow, digest: "sha256:…"}
    """
    log = _flow_run_logger(os.environ.get("PREFECT__FLOW_RUN_ID"))
    try:
        out = mounted.use_mounted_flow(path, digest, directory)
    except Exception as exc:
        log.error("flowstore: not running the flow mounted at %s: %s", path, exc)
        raise
    log.info("flowstore: running %s %s, mounted at %s and checked, from %s", out["storedflow"] or "the flow",
             out["digest"], path, out["directory"])
    return out
