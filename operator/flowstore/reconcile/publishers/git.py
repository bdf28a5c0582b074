"""Git-hosted storages (GitHub, GitLab, Bitbucket, CodeCommit, Git) are read-only: nothing is
uploaded. The ref is resolved to a commit, the flow's file read there, checked, and pinned:
status records the commit and the file's digest; agents read the file at exactly that commit
and verify it."""

from __future__ import annotations

import posixpath
from typing import Any

from flowstore.api.constants import EventReason
from flowstore.api.history import Retired, Revision
from flowstore.api.models import FlowSpec, SpecError, StorageSpec
from flowstore.api.status import GitPin
from flowstore.reconcile.building import build_request, check_bundle
from flowstore.reconcile.context import FlowContext, GitSource, ready
from flowstore.reconcile.outcomes import requested_at
from flowstore.reconcile.planning import plan
from flowstore.reconcile.ports import Event, Outcome, Pending, Ports, sha256_of
from flowstore.reconcile.publishers.base import CHANGED, MISSING, Publisher, RetireScope
from flowstore.reconcile.revisions import Stored
from flowstore.reconcile.sources import ignore_rules, pack_files
from flowstore.storage import NotFound
from flowstore.storage.git.base import GitHosted, normalize_path


class GitPinPublisher(Publisher[GitHosted]):
    family = "git"
    fixed_format = "script"
    storage_type = GitHosted

    def check_spec(self, spec: FlowSpec, storage: StorageSpec, storage_name: str) -> None:
        if spec.source.path is None and (spec.source.inline is not None or spec.source.config_map):
            raise SpecError(
                f"FlowStorage {storage_name!r} is {storage.backend!r}: flows are read from the repository, so "
                f"use spec.source.path (the file in the repository) instead of {spec.source.describe()}")
        if spec.stored_as_script is False:
            raise SpecError(f"{storage.backend!r} storages keep flows as scripts in the repository; remove "
                            "spec.storedAsScript: false")

    def resolve_source(self, ctx: FlowContext, ports: Ports) -> None:
        """Resolve the ref to a commit and read the flow's file there (unless the ref still
        resolves to the pinned commit: commits are immutable). A missing repository, ref or file
        stalls the StoredFlow (rechecked: a push fixes it); the last good pin stays recorded."""
        repo = self.storage(ctx)
        path = ctx.spec.source.path or repo.path
        if not path:
            raise SpecError(f"no flow file: set spec.source.path, or path in FlowStorage {ctx.spec.storage_name!r}")
        path = normalize_path(path)
        # with spec.<backend>.verify, only a commit (and tag) signed by its Secret's keys: else
        # SourceUnverified (VerificationFailed), and the last verified pin stays recorded
        commit, verification = repo.resolve_verified()
        pinned = GitPin.read(ctx.status)
        recorded = ctx.recorded
        source = GitSource(path=path, commit=commit, pin=GitPin(
            repo=repo.repo_name(), path=path, ref=repo.ref or "(default branch)", commit=commit,
            url=repo.web_url(path, commit),
            verification=verification.to_status() if verification is not None else None))
        if verification is not None:
            ctx.verified_by = verification.describe()
        ctx.git = source
        if pinned and pinned.commit == commit and pinned.path == path and recorded and recorded.source_digest:
            source.recorded_digest = recorded.source_digest
            if recorded.format == "bundle":  # a directory, not read again: what it was recorded as
                ctx.bundle, ctx.entrypoint, ctx.file_count = True, recorded.entrypoint, recorded.file_count or 0
            else:
                ctx.file_name = posixpath.basename(path)
        else:
            read_flow(ctx, repo, path, commit)

    def extra_inputs(self, ctx: FlowContext) -> dict[str, Any]:
        # the file (not the commit: a commit that leaves the file alone changes nothing); for a
        # directory also how its bundle is made (a change to them makes it again)
        assert ctx.git is not None
        return {"path": ctx.git.path, "checkFlow": ctx.storage_spec.config.get("checkFlow", True),
                **({"entrypoint": ctx.spec.entrypoint} if ctx.spec.entrypoint else {}),
                **({"ignore": list(ctx.spec.source.ignore)} if ctx.spec.source.ignore else {})}

    def verify(self, ctx: FlowContext, entry: Revision) -> str | None:
        """A commit's content never changes, and resolving the ref (step 2) already showed the
        repository is there: the periodic check reads nothing. An explicit reconcile-now request
        reads the pinned file again, and so does a revert to a recorded commit (a force-push may
        have taken that commit away)."""
        artifact = entry.artifact
        if entry.commit is None:
            return MISSING
        if requested_at(ctx.obj) is None and entry.revision == ctx.history.current:
            return None
        try:
            data = self.storage(ctx).read_flow(normalize_path(entry.location), entry.commit, artifact.storage_state)
        except NotFound:
            return MISSING
        return None if sha256_of(data) == artifact.digest and len(data) == artifact.size else CHANGED

    def delete_revision(self, storage: GitHosted, record: Retired, scope: RetireScope) -> str | None:
        """A commit is never deleted: history entries of git-hosted storages just leave."""
        return None

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        git = ctx.git
        assert git is not None  # resolve_source
        repo = self.storage(ctx)
        ctx.progress(f"Storing flow {ctx.spec.flow_name!r}")
        if git.recorded_digest is not None:  # something besides the file changed: read it now
            read_flow(ctx, repo, git.path, git.commit)
            git.recorded_digest = None
            plan(ctx, self)
        if ctx.bundle:
            check_bundle(ctx.source, ports)
        else:
            ports.check_script(ctx.source)
        check_flow = bool(ctx.storage_spec.config.get("checkFlow", True))
        if check_flow:
            # the flow object must exist: the same builder as pickle builds (the sandbox, or a
            # Job in spec.build's image); the pickle itself is discarded (agents read the file
            # at the pinned commit)
            checked = ports.build(build_request(ctx))
            if isinstance(checked, Pending):
                return ctx.pending(checked)
        data = ctx.source
        digest = sha256_of(data)
        state = repo.pinned_state(git.commit)
        if ctx.bundle and ctx.entrypoint:
            state.update(repo.bundle_state(ctx.entrypoint, ctx.spec.source.ignore))
        artifact = ctx.artifact(location=git.path, url=git.pin.url, digest=digest, size=len(data), source_digest=digest,
                                storage_state=state)
        previous = GitPin.read(ctx.status)
        ctx.status.pop("driftDetected", None)
        verb = f"Moved flow {ctx.spec.flow_name!r} from commit {previous.commit[:12]} to" \
            if previous and previous.commit != git.commit else f"Pinned flow {ctx.spec.flow_name!r} to"
        events = [Event("Normal", EventReason.PINNED, f"{verb} commit {git.commit[:12]} of {git.pin.repo} "
                        f"({git.path}, {len(data)} bytes, {digest[:19]}…)")]
        outcome = ready(ctx, Stored(git.path, artifact, commit=git.commit), events, uploaded=False)
        outcome.built = check_flow
        return outcome


def read_flow(ctx: FlowContext, repo: GitHosted, path: str, commit: str) -> None:
    """The flow at `path` at `commit` into ``ctx``: a file is the script; a directory's files
    (spec.source.ignore left out while reading) are packed into a bundle."""
    found = repo.read_path(path, commit, keep=ignore_rules(ctx.spec))
    if isinstance(found, bytes):
        ctx.set_script(found, posixpath.basename(path))
        return
    ctx.set_bundle(*pack_files(found, ctx.spec, where=f"{path} at commit {commit[:12]}"))
