"""``flowstore``: run the operator, or act as an agent (locate / get a stored flow)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from flowstore import cli_revisions, oci_volumes


def _parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().removesuffix("i").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _parse_selector(text: str) -> Any:
    """A Kubernetes label selector (flowstore.api.selectors), checked when the command line is read."""
    from flowstore.api import selectors

    try:
        return selectors.parse(text)
    except selectors.SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_operator(args: argparse.Namespace) -> int:
    import asyncio

    import kopf
    from kubernetes import client, config

    from flowstore import kubeconfig
    from flowstore.controller import handlers, leader
    from flowstore.controller.runtime import Settings

    # kopf's own logging setup: per-object context (namespace/name) on every record, and real
    # JSON (one object per line, with an "object" reference) for log pipelines.
    kopf.configure(verbose=args.verbose,
                   log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "kubernetes", "azure", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # SDK debug logs may echo request headers
    if not args.verbose:  # the election library logs every retry at INFO; flowstore.leader logs transitions
        logging.getLogger("leaderelection").setLevel(logging.WARNING)
    from flowstore.controller.identity import AmbientPolicy, operator_namespace

    try:
        policy = operator_policy(args)
    except ValueError as exc:
        return _print_error(exc)
    ambient = AmbientPolicy(args.ambient_identity, operator_namespace(args.operator_namespace, os.environ))
    if args.watch_label_selector is not None and args.selector is not None:
        return _print_error(ValueError("give --watch-label-selector or --selector (its earlier name), not both"))
    selector = args.watch_label_selector if args.watch_label_selector is not None else args.selector
    settings = Settings(workers=args.workers, max_builds=args.max_builds, max_build_jobs=args.max_build_jobs,
                        build_timeout=args.build_timeout, build_memory=_parse_size(args.build_memory),
                        delete_retries=args.delete_retries, policy=policy, ambient=ambient, shard=selector)
    namespaces = args.namespace or []
    election = None
    if args.leader_elect:
        # each shard elects its own leader: a shard's default Lease carries its name
        shard = selector.shard() if selector else None
        election = leader.Election(
            lease_name=args.lease_name or (f"flowstore-operator-{shard}" if shard else "flowstore-operator"),
            lease_namespace=args.lease_namespace or leader.pod_namespace(),
            identity=leader.default_identity(), lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        try:
            leader.check_timings(election)
        except ValueError as exc:
            return _print_error(exc)
    try:  # fail fast and clearly, rather than kopf retrying a startup handler every minute
        kubeconfig.load(connections=settings.workers + 4)  # + the loops' own reads and writes
    except config.ConfigException as exc:
        return _print_error(Exception(f"no Kubernetes cluster configured (in-cluster or KUBECONFIG): {exc}"))
    from flowstore.controller.record_key import RecordKeyError, load_record_key

    key_namespace = operator_namespace(args.operator_namespace, os.environ) or leader.pod_namespace()
    try:  # the key that seals the status records the operator acts on later (docs/security.md)
        settings.record_key = load_record_key(client.CoreV1Api(), key_namespace, args.record_key_secret)
    except RecordKeyError as exc:
        return _print_error(exc)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_address)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, selector=selector)
    memo = kopf.Memo(settings=settings, api=client.ApiClient())

    async def run_kopf(stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> int:
        await kopf.operator(
            registry=registry,
            settings=handlers.kopf_settings(selector),
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            liveness_endpoint=args.liveness,
            memo=memo,
            stop_flag=stop,
            ready_flag=ready,
        )
        return 0

    if election is None:
        asyncio.run(run_kopf())
        return 0

    async def lead(stop: asyncio.Event, ready: asyncio.Event) -> int:
        try:
            return await run_kopf(stop, ready)
        finally:  # reconciles still running in worker threads finish before the Lease is released
            runtime = memo.get("runtime")
            if runtime is not None:
                await asyncio.to_thread(runtime.pool.shutdown, wait=True)

    code = asyncio.run(leader.run_elected(election, lead, liveness=args.liveness))
    leader.exit_now(code)  # the election library's daemon thread must not race interpreter shutdown


def operator_policy(args: argparse.Namespace) -> Any:
    """The operator's policy (controller/policy.py) from its flags; ValueError for bad ones."""
    from flowstore.controller.policy import BuildPolicy, OperatorPolicy
    from flowstore.storage.local import local_root_refusal

    if args.local_root is not None:
        refusal = local_root_refusal(args.local_root)
        if refusal is not None:
            raise ValueError(f"--local-root: {refusal}")
    return OperatorPolicy(
        local_root=args.local_root,
        allow_private_endpoints=args.allow_private_endpoints,
        webhook_env=frozenset(args.webhook_allowed_env or ()),
        secret_policy=args.secret_policy,
        builds=BuildPolicy(enabled=args.enable_build_jobs, images=tuple(args.build_image or ()),
                           service_accounts=frozenset(args.build_service_account or ()),
                           toleration_keys=frozenset(args.build_toleration_key or ()),
                           node_selector_keys=frozenset(args.build_node_selector_key or ())),
        allow_unconfined_builds=args.allow_unconfined_builds,
    )


def _print_error(exc: Exception) -> int:
    print(f"flowstore: {exc}", file=sys.stderr)
    return 1


def _usage_error(message: str) -> int:
    print(f"flowstore: {message}", file=sys.stderr)
    return 2


def cmd_locate(args: argparse.Namespace) -> int:
    """``-o json`` (default): the status; ``-o prefect``: the seed's serialized storage;
    ``-o prefect-pull-step``: the Prefect 3 pull step (YAML) that loads the flow. Each once the
    status is checked to point where this agent trusts (it is what agents then use). Refusals go
    to the one-line table of flowstore.cli_errors."""
    from flowstore.client import resolve
    from flowstore.prefect import NotForPrefect, pull_step_yaml
    from flowstore.storage import from_serialized

    step_flags = [flag for flag, on in (("--track-latest", args.track_latest),
                                        ("--self-contained", args.self_contained)) if on]
    if step_flags and args.output != "prefect-pull-step":
        return _usage_error(f"{' and '.join(step_flags)} shape a pull step: add -o prefect-pull-step")
    if args.track_latest and (args.revision is not None or args.digest is not None):
        return _usage_error("--track-latest follows the current revision: drop --revision/--digest")
    located = resolve(args.name, args.namespace, revision=args.revision, digest=args.digest)
    if args.output in oci_volumes.OUTPUTS:
        return _locate_image_volume(located, args)
    if args.output == "prefect-pull-step":
        try:
            sys.stdout.write(pull_step_yaml(located.view, track_latest=args.track_latest,
                                            self_contained=args.self_contained))
        except (NotForPrefect, ValueError) as exc:
            return _print_error(exc)
        return 0
    doc = from_serialized(located.storage_doc).serialize() if args.output == "prefect" else dict(located.view.status)
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def _locate_image_volume(located: Any, args: argparse.Namespace) -> int:
    """``-o pod-volume`` / ``-o prefect-job-variables`` (flowstore.oci_volumes)."""
    view = located.view
    try:
        sys.stdout.write(oci_volumes.render(args.output, located.storage_doc, view.artifact.digest, view.location,
                                            view.what, args))
    except oci_volumes.NotAnImageVolume as exc:
        return _print_error(exc)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """Download (verified) and write; refusals and an -o that cannot be written go to the one-line
    table of flowstore.cli_errors."""
    from flowstore.client import load_artifact

    artifact = load_artifact(args.name, args.namespace, revision=args.revision, digest=args.digest)
    if args.output in (None, "-"):
        sys.stdout.buffer.write(artifact.data)
        return 0
    if artifact.format == "bundle" or os.path.isdir(args.output):
        return _write_into_directory(artifact, args.output)
    with open(args.output, "wb") as fh:
        fh.write(artifact.data)
    print(f"wrote {len(artifact.data)} bytes ({artifact.format}, {artifact.view.artifact.digest}) to {args.output}",
          file=sys.stderr)
    return 0


def _write_into_directory(artifact: Any, directory: str) -> int:
    """A bundle's files (checked against its manifest) into `directory`, which must be empty or
    new; a script as `directory/<its file name>`."""
    from flowstore.artifacts import bundle

    digest = artifact.view.artifact.digest
    if artifact.format == "bundle":
        if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
            return _print_error(Exception(f"{directory} exists and is not an empty directory; a flow of several "
                                          "files is written into an empty (or new) directory"))
        unpacked = bundle.unpack(artifact.data)
        os.makedirs(directory, exist_ok=True)
        bundle.extract(unpacked, directory)
        print(f"wrote {len(unpacked.files)} files (bundle, {digest}, entrypoint {unpacked.entrypoint}) to "
              f"{directory}", file=sys.stderr)
        return 0
    if artifact.format != "script":
        return _print_error(Exception(f"the artifact is a {artifact.format}, one file: give -o a file name"))
    name = os.path.basename(artifact.view.artifact.file_name or "flow.py")
    bundle.check_path(name)
    target = os.path.join(directory, name)
    with open(target, "xb") as fh:
        fh.write(artifact.data)
    print(f"wrote {len(artifact.data)} bytes (script, {digest}) to {target}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Load a stored flow (verified) and run it: what an agent does."""
    from flowstore.client import load_flow

    flow = load_flow(args.name, args.namespace, revision=args.revision, digest=args.digest)
    result: Any = flow.run()
    print(json.dumps({"flow": getattr(flow, "name", None), "result": result}, default=repr))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache ls``: the agent cache's entries, least recently used first; ``cache prune``:
    evict what the bound asks for (``--dry-run``: only say what would go). A cache that cannot be
    used (settings, a directory others may write) is the one-line table's (exit 2)."""
    from flowstore.artifacts.cache import Cache, Settings

    settings = Settings.from_environment()
    if args.dir:
        settings = Settings(root=Path(args.dir).absolute(), max_bytes=settings.max_bytes, min_age=settings.min_age)
    cache = Cache(settings)
    return _cache_ls(cache, args.output) if args.cache_command == "ls" else _cache_prune(cache, args)


def _cache_ls(cache: Any, output: str) -> int:
    import time

    settings, entries = cache.settings, cache.entries()
    if output == "json":
        listed = [{"digest": e.digest, "size": e.size, "lastUsed": e.last_used, "inUse": e.in_use,
                   "kinds": list(e.kinds)} for e in entries]
        json.dump({"root": str(settings.root), "maxBytes": settings.max_bytes, "minAgeSeconds": settings.min_age,
                   "entries": listed}, sys.stdout, indent=2)
        print()
        return 0
    now = time.time()
    print(f"{'DIGEST':<23} {'SIZE':>10} {'LAST USED':>10}  {'IN USE':<6} KIND")
    for e in entries:
        print(f"{e.digest[:23]:<23} {_human(e.size):>10} {_age(now - e.last_used):>10}  "
              f"{'yes' if e.in_use else 'no':<6} {'+'.join(e.kinds)}")
    print(f"# {len(entries)} entries, {_human(sum(e.size for e in entries))} in {settings.root} "
          f"(bound {_human(settings.max_bytes)}, evictable after {_age(settings.min_age)} unused)")
    return 0


def _cache_prune(cache: Any, args: argparse.Namespace) -> int:
    from flowstore.artifacts.cache import parse_duration, parse_size

    max_bytes = parse_size(args.max_bytes, what="--max-bytes") if args.max_bytes else None
    min_age = parse_duration(args.min_age, what="--min-age") if args.min_age else None
    result = cache.prune(dry_run=args.dry_run, max_bytes=max_bytes, min_age=min_age)
    verb = "would evict" if result.dry_run else "evicted"
    for e in result.evicted:
        print(f"{verb} {e.digest} ({_human(e.size)})")
    busy = sum(1 for e in result.kept if e.in_use)
    print(f"# {verb} {len(result.evicted)} entries ({_human(result.freed)}); {_human(result.total_after)} left in "
          f"{len(result.kept)} entries ({busy} in use)")
    return 0


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)  # pragma: no cover


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


EPILOG = """exit status: 0 done; 1 the flow is not available (not found, not stored yet, refused by
verification); 2 the environment is not ready (a missing package, no cluster configured or
reachable, an output path that cannot be written) or the command line is wrong.
Shell completion: eval "$(flowstore completion bash)" (or zsh)."""


def build_parser() -> argparse.ArgumentParser:
    from flowstore import __version__

    parser = argparse.ArgumentParser(prog="flowstore", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"flowstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    op.add_argument("-n", "--namespace", action="append",
                    help="watch only this namespace (repeatable; default: all namespaces)")
    op.add_argument("--workers", type=int, default=64, help="concurrent reconciles (default 64)")
    op.add_argument("--max-builds", type=int, default=2, help="concurrent sandboxed builds (default 2)")
    op.add_argument("--max-build-jobs", type=int, default=4,
                    help="builder Jobs (spec.build) running at once; the others wait (default 4)")
    op.add_argument("--build-timeout", type=float, default=60.0, help="seconds a flow script may run (default 60)")
    op.add_argument("--build-memory", default="512Mi", help="address-space cap of a build (default 512Mi)")
    op.add_argument("--delete-retries", type=int, default=5,
                    help="retries of an artifact deletion before the finalizer is released (default 5)")
    op.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--log-format", choices=["text", "json"], default="text")
    op.add_argument("--metrics-port", type=int, default=0,
                    help="serve Prometheus metrics on this port (default 0: off; the chart uses 9090)")
    op.add_argument("--metrics-address", default="0.0.0.0",  # noqa: S104 - a pod's metrics must be scrapable
                    help="metrics bind address (default 0.0.0.0)")
    op.add_argument("--watch-label-selector", type=_parse_selector, default=None, metavar="SELECTOR",
                    help="serve only the FlowStorages and StoredFlows this Kubernetes label selector matches, "
                         "filtered by the API server (shards: 'flowstore.dev/shard=shard1' for a shard, "
                         "'!flowstore.dev/shard' for the default one; docs/shards.md)")
    op.add_argument("--selector", type=_parse_selector, default=None, metavar="SELECTOR",
                    help="the same as --watch-label-selector (its earlier name)")
    op.add_argument("--leader-elect", action="store_true",
                    help="run kopf only while holding a coordination.k8s.io Lease (for several replicas)")
    op.add_argument("--lease-name", default=None,
                    help="the Lease (default flowstore-operator; flowstore-operator-NAME with "
                         "--watch-label-selector flowstore.dev/shard=NAME)")
    op.add_argument("--lease-namespace", default=None,
                    help="the Lease's namespace (default: the pod's namespace, else default)")
    op.add_argument("--lease-duration", type=int, default=10,
                    help="seconds a follower waits after the last renewal before taking over (default 10)")
    op.add_argument("--renew-deadline", type=float, default=8.0,
                    help="seconds the leader may fail to renew before it exits (default 8)")
    op.add_argument("--retry-period", type=float, default=2.0,
                    help="seconds between election attempts and renewals (default 2)")
    op.add_argument("--ambient-identity", choices=("own-namespace", "any", "none"), default="own-namespace",
                    help="where a FlowStorage with neither a credentials Secret nor spec.serviceAccountName may act "
                         "as the operator's own cloud identity (the SDKs' default chain): only in the operator's own "
                         "namespace (default), in any namespace, or nowhere (docs/identity.md)")
    op.add_argument("--operator-namespace", default=None,
                    help="the operator's own namespace, for --ambient-identity own-namespace and the record key "
                         "(default: $POD_NAMESPACE, else the mounted ServiceAccount's namespace)")
    op.add_argument("--record-key-secret", default="flowstore-record-key",
                    help="the Secret of the operator's own namespace that holds the key sealing the status records "
                         "it acts on later; made when missing (default flowstore-record-key; docs/security.md)")
    _policy_flags(op)
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=cmd_operator)

    for name, func, text in (("locate", cmd_locate, "print a StoredFlow's status as JSON"),
                             ("get", cmd_get, "download a stored flow, verified against its digest"),
                             ("run", cmd_run, "load a stored flow (verified) and run it")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("-n", "--namespace", default="default",
                       help="the StoredFlow's namespace (default: default)")
        if name == "locate":
            p.add_argument("-o", "--output", choices=["json", "prefect", "prefect-pull-step", *oci_volumes.OUTPUTS],
                           default="json",
                           help="json: the StoredFlow's status (default); prefect: its storage as Prefect 1 "
                                "(1.4.1's StorageSchema) serializes it; prefect-pull-step: the Prefect 3 "
                                "deployment pull step (YAML) for prefect.yaml's pull: or a PrefectDeployment's "
                                "pullSteps; pod-volume / prefect-job-variables: an oci storage's image "
                                "volume pinned by digest, as Pod spec pieces or a Prefect work pool's job variables")
            p.add_argument("--track-latest", action="store_true",
                           help="with -o prefect-pull-step: no digest in the step, each new run loads the current "
                                "revision (default: the step pins the revision printed)")
            p.add_argument("--self-contained", action="store_true",
                           help="with -o prefect-pull-step: the step carries the revision's artifact, storage and "
                                "signature, so workers need no Kubernetes API (docs/prefect.md)")
            oci_volumes.add_locate_args(p)
        if name == "get":
            p.add_argument("-o", "--output", help="file to write (default: stdout); a directory for a flow of "
                           "several files (its files are written there)")
        cli_revisions.add_revision_args(p)
        p.set_defaults(func=func)
    cli_revisions.add_parsers(sub)

    cache = sub.add_parser("cache", help="the agent cache (FLOWSTORE_CACHE_DIR): list or prune its entries")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    ls = cache_sub.add_parser("ls", help="entries, least recently used first (in use: a process holds them)")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    prune = cache_sub.add_parser("prune", help="evict least recently used entries until the cache fits its bound "
                                 "(FLOWSTORE_CACHE_MAX_BYTES), never one in use or used within FLOWSTORE_CACHE_MIN_AGE")
    prune.add_argument("--dry-run", action="store_true", help="only print what would be evicted")
    prune.add_argument("--max-bytes", help="this bound instead of FLOWSTORE_CACHE_MAX_BYTES (e.g. 0, 500Mi)")
    prune.add_argument("--min-age", help="this minimum age instead of FLOWSTORE_CACHE_MIN_AGE (e.g. 0, 1h)")
    for p in (ls, prune):
        p.add_argument("--dir", help="the cache's directory (default: FLOWSTORE_CACHE_DIR, else "
                       "~/.cache/flowstore/agent)")
        p.set_defaults(func=cmd_cache)

    comp = sub.add_parser("completion", help="print a shell completion script: eval \"$(flowstore completion bash)\"")
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    """The completion script shtab generates from this very parser (so it knows every subcommand
    and option there is)."""
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _policy_flags(op: argparse.ArgumentParser) -> None:
    """What the operator lends the authors of specs (docs/security.md); defaults are the safe ones."""
    from flowstore.controller.policy import SECRET_POLICIES

    group = op.add_argument_group("policy", "what FlowStorages and StoredFlows may make the operator do "
                                  "(docs/security.md)")
    group.add_argument("--local-root", default=None, metavar="DIR",
                       help="serve Local storage under DIR/<namespace>/ (default: no Local storage)")
    group.add_argument("--allow-private-endpoints", action="store_true",
                       help="let Webhook requests reach loopback and private addresses (never link-local or "
                            "cloud metadata ones)")
    group.add_argument("--webhook-allowed-env", action="append", metavar="NAME",
                       help="an environment variable of the operator that Webhook templates may use when a "
                            "FlowStorage's allowedEnv names it (repeatable; default: none)")
    group.add_argument("--secret-policy", choices=SECRET_POLICIES, default="opt-in",
                       help="opt-in: use only Secrets labelled flowstore.dev/allow=true (default); any: every "
                            "Secret a spec names")
    group.add_argument("--enable-build-jobs", action="store_true",
                       help="build StoredFlows with spec.build as Jobs in their own image (default: refused)")
    group.add_argument("--build-image", action="append", metavar="PATTERN",
                       help="an image builder Jobs may run, shell-style (e.g. registry.example.com/team/*; repeatable)")
    group.add_argument("--build-service-account", action="append", metavar="NAME",
                       help="a ServiceAccount spec.build may name (repeatable; default: none, builds get no token)")
    group.add_argument("--build-toleration-key", action="append", metavar="KEY",
                       help="a taint key spec.build.tolerations may tolerate (repeatable; default: none)")
    group.add_argument("--build-node-selector-key", action="append", metavar="KEY",
                       help="a node label key spec.build.nodeSelector may use (repeatable; default: none)")
    group.add_argument("--allow-unconfined-builds", action="store_true",
                       help="build in the sandbox even when the kernel cannot confine builds fully (default: refuse)")


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; an error of the environment (or of the flow) is one line with a hint
    (flowstore.cli_errors), never a traceback, whichever subcommand met it."""
    from flowstore import cli_errors

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `flowstore get … | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        problem = cli_errors.explain(exc)
        if problem is None:
            raise
        print(problem.line(), file=sys.stderr)
        return problem.code


if __name__ == "__main__":
    sys.exit(main())
