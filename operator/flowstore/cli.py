"""``flowstore``: run the operator, or act as an agent (locate / get a stored flow)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any

from flowstore import cli_revisions


def _parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().removesuffix("i").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _parse_selector(text: str) -> str:
    """``KEY=VALUE[,KEY2=VALUE2]`` (equality only), checked and normalized."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        prefix, slash, name = key.rpartition("/")
        if (not eq or not name or "=" in value or "!" in key or not _LABEL_NAME.match(name)
                or not _LABEL_NAME.match(value) or (slash and not _LABEL_PREFIX.match(prefix))):
            raise argparse.ArgumentTypeError(f"not a KEY=VALUE label selector: {item!r}")
        pairs[key] = value
    return ",".join(f"{k}={v}" for k, v in pairs.items())


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

    ambient = AmbientPolicy(args.ambient_identity, operator_namespace(args.operator_namespace, os.environ))
    settings = Settings(workers=args.workers, max_builds=args.max_builds, max_build_jobs=args.max_build_jobs,
                        build_timeout=args.build_timeout, build_memory=_parse_size(args.build_memory),
                        delete_retries=args.delete_retries, ambient=ambient)
    namespaces = args.namespace or []
    election = None
    if args.leader_elect:
        election = leader.Election(
            lease_name=args.lease_name, lease_namespace=args.lease_namespace or leader.pod_namespace(),
            identity=leader.default_identity(), lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        try:
            leader.check_timings(election)
        except ValueError as exc:
            return _print_error(exc)
    try:  # fail fast and clearly, rather than kopf retrying a startup handler every minute
        kubeconfig.load()
    except config.ConfigException as exc:
        return _print_error(Exception(f"no Kubernetes cluster configured (in-cluster or KUBECONFIG): {exc}"))
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_address)
    registry = kopf.OperatorRegistry()
    selector = dict(item.split("=", 1) for item in args.selector.split(",")) if args.selector else None
    handlers.register(registry, labels=selector)
    memo = kopf.Memo(settings=settings, api=client.ApiClient())

    async def run_kopf(stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> int:
        await kopf.operator(
            registry=registry,
            settings=handlers.kopf_settings(),
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

    return asyncio.run(leader.run_elected(election, lead, liveness=args.liveness))


def _print_error(exc: Exception) -> int:
    print(f"flowstore: {exc}", file=sys.stderr)
    return 1


def cmd_locate(args: argparse.Namespace) -> int:
    """``-o json`` (default): the status; ``-o prefect``: the seed's serialized storage;
    ``-o prefect-pull-step``: the Prefect 3 pull step (YAML) that loads the flow."""
    from flowstore.client import FlowNotAvailable, seed_storage, stored_status, storedflow
    from flowstore.storage import StorageError

    obj: dict[str, Any] = {}
    try:
        which = {"revision": args.revision, "digest": args.digest}
        if args.output == "prefect":
            doc = seed_storage(args.name, args.namespace, **which)
        else:
            obj = storedflow(args.name, args.namespace)
            doc = stored_status(obj, args.name, args.namespace, **which)
    except (FlowNotAvailable, StorageError) as exc:
        return _print_error(exc)
    if args.output == "prefect-pull-step":
        from flowstore.prefect import NotForPrefect, pull_step_yaml

        try:
            object_name = (obj.get("spec") or {}).get("objectName")
            sys.stdout.write(pull_step_yaml(args.name, args.namespace, doc, object_name=object_name))
        except NotForPrefect as exc:
            return _print_error(exc)
        return 0
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from flowstore.artifacts.signing import SignatureError
    from flowstore.client import FlowNotAvailable, load_artifact
    from flowstore.storage import StorageError

    try:
        artifact = load_artifact(args.name, args.namespace, revision=args.revision, digest=args.digest)
    except (FlowNotAvailable, StorageError, SignatureError) as exc:
        return _print_error(exc)
    digest = artifact.status["artifact"]["digest"]
    if args.output in (None, "-"):
        sys.stdout.buffer.write(artifact.data)
        return 0
    if artifact.format == "bundle" or os.path.isdir(args.output):
        return _write_into_directory(artifact, args.output)
    with open(args.output, "wb") as fh:
        fh.write(artifact.data)
    print(f"wrote {len(artifact.data)} bytes ({artifact.format}, {digest}) to {args.output}", file=sys.stderr)
    return 0


def _write_into_directory(artifact: Any, directory: str) -> int:
    """A bundle's files (checked against its manifest) into `directory`, which must be empty or
    new; a script as `directory/<its file name>`."""
    from flowstore.artifacts import bundle

    digest = artifact.status["artifact"]["digest"]
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
    name = os.path.basename(str(artifact.status["artifact"].get("fileName") or "flow.py"))
    target = os.path.join(directory, name)
    with open(target, "xb") as fh:
        fh.write(artifact.data)
    print(f"wrote {len(artifact.data)} bytes (script, {digest}) to {target}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Load a stored flow (verified) and run it: what an agent does."""
    from flowstore.artifacts.signing import SignatureError
    from flowstore.client import FlowNotAvailable, load_flow
    from flowstore.storage import StorageError

    try:
        flow = load_flow(args.name, args.namespace, revision=args.revision, digest=args.digest)
    except (FlowNotAvailable, StorageError, SignatureError) as exc:
        return _print_error(exc)
    result: Any = flow.run()
    print(json.dumps({"flow": getattr(flow, "name", None), "result": result}, default=repr))
    return 0


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
    op.add_argument("--workers", type=int, default=8, help="concurrent reconciles (default 8)")
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
    op.add_argument("--selector", type=_parse_selector, default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                    help="reconcile only FlowStorages and StoredFlows with these labels (shards several operators)")
    op.add_argument("--leader-elect", action="store_true",
                    help="run kopf only while holding a coordination.k8s.io Lease (for several replicas)")
    op.add_argument("--lease-name", default="flowstore-operator", help="the Lease (default flowstore-operator)")
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
                    help="the operator's own namespace, for --ambient-identity own-namespace (default: "
                         "$POD_NAMESPACE, else the mounted ServiceAccount's namespace)")
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
            p.add_argument("-o", "--output", choices=["json", "prefect", "prefect-pull-step"], default="json",
                           help="json: the StoredFlow's status (default); prefect: its storage as Prefect 1 "
                                "(1.4.1's StorageSchema) serializes it; prefect-pull-step: the Prefect 3 "
                                "deployment pull step (YAML) for prefect.yaml's pull: or a PrefectDeployment's "
                                "pullSteps")
        if name == "get":
            p.add_argument("-o", "--output", help="file to write (default: stdout); a directory for a flow of "
                           "several files (its files are written there)")
        cli_revisions.add_revision_args(p)
        p.set_defaults(func=func)
    cli_revisions.add_parsers(sub)

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
