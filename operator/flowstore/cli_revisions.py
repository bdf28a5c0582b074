"""``flowstore history`` and ``flowstore rollback``: a StoredFlow's revisions, and pinning one of them
(docs/revisions.md). Errors are one ``flowstore: …`` line and exit code 1, as the other
subcommands' (``flowstore.cli``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flowstore.api.constants import GROUP, STOREDFLOW_PLURAL, VERSION
from flowstore.api.history import History, Revision
from flowstore.api.models import Pin, SpecError

#: Argo CD's default tracking label, and its annotation tracking
#: (https://argo-cd.readthedocs.io/en/stable/user-guide/resource_tracking/)
ARGOCD_LABEL = "app.kubernetes.io/instance"
ARGOCD_ANNOTATION = "argocd.argoproj.io/tracking-id"


class RollbackRefused(Exception):
    """--apply would be undone (Argo CD self-heal), or the revision does not exist."""


def add_revision_args(parser: argparse.ArgumentParser) -> None:
    """``--revision N`` / ``--digest D`` (get, run, locate): that revision of status.history."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--revision", type=int, metavar="N",
                       help="a revision of status.history instead of the current one (flowstore history NAME)")
    which.add_argument("--digest", metavar="sha256:…", help="the revision whose artifact has this digest")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("history", help="list a StoredFlow's revisions (status.history)")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rollback", help="pin a StoredFlow to a revision (spec.pin): print the patch, or --apply it")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="REVISION|DIGEST", help="a revision number, or a revision's sha256 digest "
                      "(a unique prefix will do)")
    what.add_argument("--clear", action="store_true", help="remove spec.pin: the newest revision becomes current")
    p.add_argument("--apply", action="store_true", help="patch the StoredFlow now (default: print the patch, for "
                   "the manifest in Git)")
    p.add_argument("--force", action="store_true", help="--apply even where Argo CD would undo it (self-heal)")
    p.set_defaults(func=cmd_rollback)


def _error(message: str) -> int:
    print(f"flowstore: {message}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------ history
def cmd_history(args: argparse.Namespace) -> int:
    from flowstore.client import FlowNotAvailable, storedflow

    try:
        obj = storedflow(args.name, args.namespace)
    except FlowNotAvailable as exc:
        return _error(str(exc))
    status = obj.get("status") or {}
    history = History.read(status)
    pin = _pin_of(obj)
    pinned = _pinned(history, pin)
    latest = history.entries[0].revision if pin is None and history.entries else (status.get("latest") or {}).get(
        "revision")
    if args.output == "json":
        json.dump({"name": args.name, "namespace": args.namespace, "current": history.current,
                   "pinned": pinned.revision if pinned else None, "latest": latest,
                   "pin": (obj.get("spec") or {}).get("pin"), "lastRevision": history.last_revision,
                   "history": [e.to_status() for e in history.entries]}, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    if not history.entries:
        print(f"StoredFlow {args.namespace}/{args.name} has no revisions yet", file=sys.stderr)
        return 0
    rows = [("REVISION", "DIGEST", "STORED AT", "SOURCE", "")]
    for entry in history.entries:
        marks = [m for m, on in (("current", entry.revision == history.current),
                                 ("pinned", pinned is not None and entry.revision == pinned.revision),
                                 ("latest", pin is not None and entry.revision == latest)) if on]
        rows.append((str(entry.revision), entry.digest[:19] + "…", entry.stored_at, _source(entry), ",".join(marks)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else ""))
    if pin is not None and pinned is None:
        print(f"spec.pin names {pin.describe()}, which is not in the history", file=sys.stderr)
    return 0


def _source(entry: Revision) -> str:
    """Where the revision came from: the commit (git-hosted), else the source's digest."""
    if entry.commit:
        return f"commit {entry.commit[:12]}"
    source = entry.artifact.source_digest
    return f"{source[:19]}…" if source else "-"


def _pin_of(obj: dict[str, Any]) -> Pin | None:
    try:
        return Pin.parse((obj.get("spec") or {}).get("pin"))
    except SpecError:
        return None


def _pinned(history: History, pin: Pin | None) -> Revision | None:
    return history.find(revision=pin.revision, digest=pin.digest) if pin is not None else None


# ------------------------------------------------------------------------------ rollback
def resolve(history: History, to: str) -> Revision:
    """The revision `to` names: a number, or a digest (``sha256:`` and at least 7 hex digits
    of it; unique). Raises RollbackRefused naming the revisions there are."""
    text = to.strip()
    matches: list[Revision]
    if text.isdigit():
        matches = [e for e in history.entries if e.revision == int(text)]
    else:
        hexpart = text.removeprefix("sha256:").rstrip("…").lower()
        if len(hexpart) < 7 or any(c not in "0123456789abcdef" for c in hexpart):
            raise RollbackRefused(f"--to {to!r} is neither a revision number nor a sha256 digest (or 7+ hex digits "
                                  "of one)")
        matches = [e for e in history.entries if e.digest.removeprefix("sha256:").startswith(hexpart)]
    if not matches:
        raise RollbackRefused(f"{to} is not in the StoredFlow's history (revisions: {history.describe()})")
    if len({e.digest for e in matches}) > 1:
        raise RollbackRefused(f"{to} matches revisions {', '.join(str(e.revision) for e in matches)}; give more of "
                              "the digest, or the revision number")
    return matches[0]


def cmd_rollback(args: argparse.Namespace) -> int:
    from flowstore.client import FlowNotAvailable, _custom_api, storedflow

    try:
        api = _custom_api()
        obj = storedflow(args.name, args.namespace, api=api)
        history = History.read(obj.get("status") or {})
        target = None if args.clear else resolve(history, args.to)
    except (FlowNotAvailable, RollbackRefused) as exc:
        return _error(str(exc))
    who = f"StoredFlow {args.namespace}/{args.name}"
    patch: dict[str, Any]
    if target is None:
        patch, what = {"spec": {"pin": None}}, "remove spec.pin (the newest revision becomes current)"
    else:
        patch = {"spec": {"pin": {"revision": target.revision, "digest": None}}}
        what = (f"pin revision {target.revision} ({target.digest[:19]}…, stored {target.stored_at}; current now: "
                f"revision {history.current})")
    if not args.apply:
        print(f"# {who}: {what}.")
        print("# Put this in the StoredFlow's manifest in Git (Argo CD or Flux applies it), or run again with --apply:")
        if target is None:
            print("spec:\n  pin: null")
        else:
            print(f"spec:\n  pin:\n    revision: {target.revision}")
        return 0
    if not args.force:
        try:
            refusal = argocd_self_heal(obj)
        except Exception as exc:  # the check itself failed: say so rather than guess
            refusal = f"could not check whether Argo CD manages it ({type(exc).__name__}: {exc})"
        if refusal:
            return _error(f"not applying to {who}: {refusal}. Argo CD would undo the patch: commit it to Git "
                          "instead (run without --apply to print it), or pass --force")
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, args.namespace, STOREDFLOW_PLURAL, args.name, patch)
    except Exception as exc:
        return _error(f"patching {who}: {getattr(exc, 'reason', None) or exc}")
    print(f"storedflow.flowstore.dev/{args.name} " + ("unpinned" if target is None else
                                                      f"pinned to revision {target.revision}"))
    return 0


# ------------------------------------------------------------------------------ Argo CD
def argocd_self_heal(obj: dict[str, Any]) -> str | None:
    """Why Argo CD would undo a change to `obj` (an Application with automated sync and
    self-heal tracks it), or None. The object names its Application by Argo CD's tracking
    annotation or label; the Application is read when the CRD is served. Tracked by the
    annotation but the Application unreadable: refused (self-heal cannot be ruled out)."""
    meta = obj.get("metadata") or {}
    annotation = str((meta.get("annotations") or {}).get(ARGOCD_ANNOTATION) or "")
    label = str((meta.get("labels") or {}).get(ARGOCD_LABEL) or "")
    app = annotation.split(":", 1)[0] if annotation else label
    if not app:
        return None
    try:
        apps = _applications()
    except _Unreadable as exc:
        if exc.not_served and not annotation:
            return None  # no Argo CD here: the label is someone else's (e.g. Helm's)
        return f"it is tracked by Argo CD Application {app!r} ({ARGOCD_ANNOTATION if annotation else ARGOCD_LABEL}), " \
               f"and its Application cannot be read to check self-heal ({exc})"
    for application in apps:
        ameta = application.get("metadata") or {}
        if app not in (ameta.get("name"), f"{ameta.get('namespace')}_{ameta.get('name')}"):
            continue
        automated = ((application.get("spec") or {}).get("syncPolicy") or {}).get("automated")
        if isinstance(automated, dict) and automated.get("selfHeal") and automated.get("enabled", True) is not False:
            return (f"Argo CD Application {ameta.get('namespace')}/{ameta.get('name')} manages it with automated sync "
                    "and selfHeal: true")
        return None
    return None


class _Unreadable(Exception):
    def __init__(self, message: str, *, not_served: bool) -> None:
        super().__init__(message)
        self.not_served = not_served


def _applications() -> list[dict[str, Any]]:
    """Every Argo CD Application the caller may read (argoproj.io/v1alpha1)."""
    from kubernetes.client.exceptions import ApiException

    from flowstore.client import _custom_api

    try:
        found = _custom_api().list_cluster_custom_object("argoproj.io", "v1alpha1", "applications")
    except ApiException as exc:
        raise _Unreadable(f"HTTP {exc.status} {exc.reason}", not_served=exc.status == 404) from None
    return list((found or {}).get("items") or [])
