"""Verified git sources, as Flux's GitRepository ``spec.verify`` does: only a commit (or tag)
signed by a key the FlowStorage's Secret names is pinned.

``spec.<backend>.verify: {mode, secretRef: {name}}`` on every git-hosted storage:

* ``mode``: ``HEAD`` (the commit the ref resolves to must be signed; the default), ``Tag`` (the
  ref must be an annotated tag, and the tag object must be signed) or ``TagAndHEAD`` (both);
* the Secret's key ``allowed_signers`` holds SSH keys in git's allowed-signers format
  (``alice@example.com namespaces="git" ssh-ed25519 AAAA…``: ``man ssh-keygen``, ALLOWED
  SIGNERS), and every key ending in ``.asc`` holds OpenPGP public keys (ASCII-armored, as
  ``gpg --armor --export`` writes them). Either or both.

The signatures are checked by **git itself** (``git verify-commit`` / ``git verify-tag``, which
run ``ssh-keygen -Y verify`` with ``gpg.ssh.allowedSignersFile``, or ``gpg`` with a private
``GNUPGHOME`` holding only the Secret's keys), on the raw objects, in a scratch repository of our
own with no configuration but ours: never a provider's "verified: true". Before that, each raw
object is hashed by git (``git hash-object``) and must have exactly the id the ref resolved to,
so a signature can only vouch for the commit that is pinned. Who provides the raw objects:

* ``Git``: the commit (and tag) fetched over git's own protocol into the storage's cache;
* ``GitHub``: the REST API's documented ``verification.payload`` and ``verification.signature``
  (the signed object without, and its signature), put back together into the raw object
  (https://docs.github.com/en/rest/git/commits#get-a-commit-object,
  https://docs.github.com/en/rest/git/tags#get-a-tag);
* ``GitLab``, ``Bitbucket``, ``CodeCommit``: their REST APIs give no raw objects, so the commit
  (and tag) are fetched over git's smart HTTP from the clone URL their API names, with the same
  credentials (without trees or blobs: the files are still read through the API).

The files of a verified commit are read through the provider's API by commit id: the provider
is trusted to serve that commit's tree (as it is trusted to hold the repository at all); the
plain ``Git`` storage reads them from the fetched objects, which git checks against their ids.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from flowstore.api.constants import Reason
from flowstore.storage.errors import InvalidConfig, StorageError

MODES: Final = ("HEAD", "Tag", "TagAndHEAD")
ALLOWED_SIGNERS_KEY: Final = "allowed_signers"
PGP_SUFFIX: Final = ".asc"
#: seconds one verification (git, ssh-keygen, gpg) may take
VERIFY_TIMEOUT = 60.0
#: the most bytes of one raw commit or tag object (a signed commit is a few KiB)
MAX_OBJECT_BYTES = 1024 * 1024
_SSH_GOOD = re.compile(r'Good "git" signature(?: for (?P<principal>.+?))? with (?P<alg>\S+) key (?P<fp>SHA256:\S+)')
_GPG_VALID = re.compile(r"^\[GNUPG:\] VALIDSIG (?P<fpr>[0-9A-F]+) ", re.MULTILINE)
_GPG_GOOD = re.compile(r"^\[GNUPG:\] GOODSIG (?P<keyid>[0-9A-F]+) (?P<uid>.*)$", re.MULTILINE)
_GPG_NOKEY = re.compile(r"^\[GNUPG:\] (?:NO_PUBKEY|ERRSIG) (?P<keyid>[0-9A-F]+)", re.MULTILINE)
#: verified (policy, object id) -> the key that signed it: objects are immutable by id, so a
#: commit verified once with the same keys is not verified again on every pass
_VERIFIED: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
_VERIFIED_MAX = 1024
_VERIFIED_LOCK = threading.Lock()


class SourceUnverified(StorageError):
    """The commit or tag is unsigned, or signed by a key the verify Secret does not hold, or its
    signature does not verify. The last verified pin stays; a signed push fixes it."""

    reason = Reason.VERIFICATION_FAILED


@dataclasses.dataclass(frozen=True)
class VerifyPolicy:
    """``spec.<backend>.verify`` with the keys its Secret holds."""

    mode: str
    allowed_signers: str | None
    #: (Secret key, ASCII-armored OpenPGP public keys)
    pgp_keys: tuple[tuple[str, str], ...]
    #: names the Secret in messages
    source: str

    @classmethod
    def from_config(cls, verify: Any, keys: Mapping[str, str] | None, *, backend: str) -> VerifyPolicy | None:
        """The policy of a storage's ``verify`` block (None when it has none); `keys` is what the
        operator read from its Secret (``verifyKeys``: key -> text)."""
        if verify is None:
            return None
        if not isinstance(verify, Mapping):
            raise InvalidConfig(f"spec.{backend}.verify must be an object such as {{mode: HEAD, secretRef: "
                                "{name: flow-signers}}")
        mode = verify.get("mode") or "HEAD"
        if mode not in MODES:
            raise InvalidConfig(f"spec.{backend}.verify.mode must be one of {', '.join(MODES)}, not {mode!r}")
        ref = verify.get("secretRef") or {}
        name = ref.get("name") if isinstance(ref, Mapping) else None
        source = f"Secret {name!r} (spec.{backend}.verify.secretRef)" if name else f"spec.{backend}.verify"
        if keys is None:
            raise InvalidConfig(f"{source}: the keys to verify commits with were not read; spec.{backend}.verify "
                                "needs secretRef naming a Secret with allowed_signers and/or *.asc keys")
        signers = keys.get(ALLOWED_SIGNERS_KEY) or None
        pgp = tuple(sorted((k, v) for k, v in keys.items() if k.endswith(PGP_SUFFIX) and v.strip()))
        if not (signers and signers.strip()) and not pgp:
            raise InvalidConfig(f"{source} holds no key: add SSH keys under the key {ALLOWED_SIGNERS_KEY!r} (git's "
                                "allowed-signers format) and/or OpenPGP public keys under keys ending in .asc")
        return cls(mode=str(mode), allowed_signers=signers, pgp_keys=pgp, source=source)

    @property
    def fingerprint(self) -> str:
        """A digest of the mode and keys (what a cached verification was made with)."""
        doc = "\0".join([self.mode, self.allowed_signers or "", *(f"{k}\0{v}" for k, v in self.pgp_keys)])
        return hashlib.sha256(doc.encode()).hexdigest()

    @property
    def wants_commit(self) -> bool:
        return self.mode in ("HEAD", "TagAndHEAD")

    @property
    def wants_tag(self) -> bool:
        return self.mode in ("Tag", "TagAndHEAD")


@dataclasses.dataclass(frozen=True)
class RawObject:
    """A raw git object as the repository stores it (without git's ``<type> <size>\\0`` header)."""

    kind: str  # commit | tag
    object_id: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class SignedRef:
    """What a provider found for a ref: the commit it resolves to, its raw object (None when the
    provider says it is unsigned and gives none), and, when asked for, the annotated tag."""

    commit: str
    commit_object: RawObject | None
    tag_name: str | None = None
    #: the annotated tag's object id (None: a lightweight tag, or no tag asked for)
    tag_id: str | None = None
    tag_object: RawObject | None = None


@dataclasses.dataclass(frozen=True)
class Verification:
    """What was verified, and by which key (status.git.verification; the SourceVerified condition)."""

    mode: str
    commit: str
    commit_key: str | None = None
    tag: str | None = None
    tag_key: str | None = None

    def describe(self) -> str:
        parts = []
        if self.tag_key:
            parts.append(f"tag {self.tag} signed by {self.tag_key}")
        if self.commit_key:
            parts.append(f"commit {self.commit[:12]} signed by {self.commit_key}")
        return "; ".join(parts) or f"commit {self.commit[:12]}"

    def to_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mode": self.mode, "commit": self.commit}
        if self.commit_key:
            doc["commitKey"] = self.commit_key
        if self.tag:
            doc["tag"] = self.tag
        if self.tag_key:
            doc["tagKey"] = self.tag_key
        return doc


def tag_name(ref: str | None, *, backend: str) -> str:
    """The tag a Tag-mode ref names (``v1.2`` or ``refs/tags/v1.2``)."""
    if not ref or ref.startswith("refs/heads/"):
        raise InvalidConfig(f"spec.{backend}.verify.mode Tag needs spec.{backend}.ref to name a tag (e.g. v1.2.0), not "
                            f"{ref or 'the default branch'!r}")
    return ref.removeprefix("refs/tags/")


def verify(policy: VerifyPolicy, found: SignedRef, *, what: str) -> Verification:
    """Check `found` as `policy` says: each raw object hashes to its id, the tag points at the
    commit, and git verifies each signature with the policy's keys. SourceUnverified otherwise."""
    objects: list[RawObject] = []
    if policy.wants_tag:
        if found.tag_object is None and found.tag_id:
            raise SourceUnverified(_unsigned(what, "tag", found.tag_id, policy))
        if found.tag_object is None:
            raise SourceUnverified(f"{what}: {found.tag_name or 'the ref'} is not an annotated tag (a lightweight tag "
                                   f"or a branch carries no signature); verify.mode {policy.mode} needs a signed tag "
                                   "(git tag -s), or mode HEAD")
        target = _tag_target(found.tag_object.data)
        if target != found.commit:
            raise SourceUnverified(f"{what}: tag {found.tag_name} points at {target or 'nothing'}, not at commit "
                                   f"{found.commit[:12]} the provider resolved it to; refusing it")
        objects.append(found.tag_object)
    if policy.wants_commit:
        if found.commit_object is None:
            raise SourceUnverified(_unsigned(what, "commit", found.commit, policy))
        objects.append(found.commit_object)
    keys = verify_objects(policy, objects, what=what)
    return Verification(
        mode=policy.mode, commit=found.commit,
        commit_key=keys.get(found.commit_object.object_id.lower())
        if found.commit_object and policy.wants_commit else None,
        tag=found.tag_name if policy.wants_tag else None,
        tag_key=keys.get(found.tag_object.object_id.lower()) if found.tag_object and policy.wants_tag else None)


def verify_objects(policy: VerifyPolicy, objects: Sequence[RawObject], *, what: str) -> dict[str, str]:
    """{object id: the key that signed it} for `objects`: each must hash to its id (checked here
    and again by git), then is written into a scratch repository and verified there by git with
    only the policy's keys. Objects verified before with the same keys are not verified again."""
    keys: dict[str, str] = {}
    todo = []
    for obj in objects:
        if len(obj.data) > MAX_OBJECT_BYTES:
            raise SourceUnverified(f"{what}: the {obj.kind} object {obj.object_id[:12]} is larger than "
                                   f"{MAX_OBJECT_BYTES} bytes; refusing to verify it")
        object_id = object_id_of(obj.kind, obj.data, sha256=len(obj.object_id) == 64)
        if object_id != obj.object_id.lower():
            raise SourceUnverified(f"{what}: the {obj.kind} object the provider gave hashes to {object_id[:12]}, "
                                   f"not {obj.object_id[:12]}; refusing it (its signature would vouch for "
                                   "another object)")
        with _VERIFIED_LOCK:
            known = _VERIFIED.get((policy.fingerprint, object_id))
        if known is not None:
            keys[object_id] = known
        else:
            todo.append(obj)
    if not todo:
        return keys
    object_format = "sha256" if len(todo[0].object_id) == 64 else "sha1"
    with _scratch(policy, object_format) as (repo, env):
        for obj in todo:
            written = _run(["git", "hash-object", "-t", obj.kind, "-w", "--stdin"], repo, env, obj.data)
            if written.returncode or written.stdout.decode().strip() != obj.object_id.lower():
                raise SourceUnverified(f"{what}: the {obj.kind} {obj.object_id[:12]} the provider gave is not a valid "
                                       f"git {obj.kind} object ({_tail(written.stderr)}); refusing it")
            key = check_signature(policy, repo, env, obj.kind, obj.object_id.lower(), what=what)
            keys[obj.object_id.lower()] = key
            with _VERIFIED_LOCK:
                _VERIFIED[(policy.fingerprint, obj.object_id.lower())] = key
                while len(_VERIFIED) > _VERIFIED_MAX:
                    _VERIFIED.popitem(last=False)
    return keys


def object_id_of(kind: str, data: bytes, *, sha256: bool = False) -> str:
    """The id git gives the object `data` of type `kind` (sha1, or sha256 in SHA-256 repositories)."""
    digest = hashlib.sha256() if sha256 else hashlib.sha1(usedforsecurity=False)
    digest.update(b"%s %d\0" % (kind.encode(), len(data)))
    digest.update(data)
    return digest.hexdigest()


def check_signature(policy: VerifyPolicy, repo: Path, env: Mapping[str, str], kind: str, object_id: str, *,
                    what: str) -> str:
    """Run ``git verify-commit|verify-tag --raw`` on `object_id` in `repo` (with `env` from
    :func:`keyring`); the key that signed it, or SourceUnverified."""
    done = _run(["git", f"verify-{kind}", "--raw", object_id], repo, env)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    ssh, valid, good = _SSH_GOOD.search(output), _GPG_VALID.search(output), _GPG_GOOD.search(output)
    if done.returncode == 0 and ssh and ssh.group("principal"):
        return f"SSH key {ssh.group('fp')} ({ssh.group('principal')})"
    if done.returncode == 0 and valid:
        uid = f" ({good.group('uid').strip()[:100]})" if good else ""
        return f"OpenPGP key {valid.group('fpr')}{uid}"
    if "no signature found" in output or not output.strip():
        raise SourceUnverified(_unsigned(what, kind, object_id, policy))
    if ssh:  # a good signature, by a key not in allowed_signers
        raise SourceUnverified(f"{what}: {kind} {object_id[:12]} is signed by SSH key {ssh.group('fp')}, which "
                               f"{policy.source} does not list in {ALLOWED_SIGNERS_KEY}; add that key there if it is "
                               "trusted, or sign with a key it lists. The last verified pin stays")
    nokey = _GPG_NOKEY.search(output)
    if nokey:
        raise SourceUnverified(f"{what}: {kind} {object_id[:12]} is signed by OpenPGP key {nokey.group('keyid')}, "
                               f"which {policy.source} does not hold in a .asc key; add it if it is trusted, or sign "
                               "with a key it holds. The last verified pin stays")
    raise SourceUnverified(f"{what}: the signature of {kind} {object_id[:12]} does not verify with the keys of "
                           f"{policy.source} ({_tail(output.encode())}); the last verified pin stays")


def _unsigned(what: str, kind: str, object_id: str, policy: VerifyPolicy) -> str:
    return (f"{what}: {kind} {object_id[:12]} is not signed, and verify.mode {policy.mode} accepts only {kind}s signed "
            f"by a key of {policy.source}; sign it (git commit -S / git tag -s) and push. The last verified pin stays")


def _tag_target(data: bytes) -> str | None:
    first = data.split(b"\n", 1)[0]
    return first[len(b"object "):].decode("ascii", "replace") if first.startswith(b"object ") else None


# ---------------------------------------------------------------------- running git on our keys
@contextlib.contextmanager
def keyring(policy: VerifyPolicy) -> Iterator[dict[str, str]]:
    """The environment for git to verify with exactly the policy's keys: a private HOME, no
    system or global configuration, ``gpg.ssh.allowedSignersFile`` written from the Secret, and
    a private ``GNUPGHOME`` with the Secret's OpenPGP keys imported (and nothing else)."""
    private = Path(tempfile.mkdtemp(prefix="flowstore-verify-"))
    try:
        private.chmod(0o700)
        signers = private / "allowed_signers"
        signers.write_text((policy.allowed_signers or "").rstrip("\n") + "\n")
        gnupg = private / "gnupg"
        gnupg.mkdir(mode=0o700)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(private), "GNUPGHOME": str(gnupg),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C",
            "GIT_CONFIG_COUNT": "3",
            "GIT_CONFIG_KEY_0": "gpg.ssh.allowedSignersFile", "GIT_CONFIG_VALUE_0": str(signers),
            "GIT_CONFIG_KEY_1": "gpg.program", "GIT_CONFIG_VALUE_1": "gpg",
            "GIT_CONFIG_KEY_2": "gpg.ssh.program", "GIT_CONFIG_VALUE_2": "ssh-keygen",
        }
        for key, armored in policy.pgp_keys:
            done = _run(["gpg", "--batch", "--quiet", "--no-autostart", "--import"], private, env, armored.encode())
            if done.returncode:
                raise InvalidConfig(f"{policy.source}: the key {key!r} is not an OpenPGP public key gpg can import "
                                    f"({_tail(done.stderr)}); store `gpg --armor --export KEYID` there")
        yield env
    finally:
        shutil.rmtree(private, ignore_errors=True)


@contextlib.contextmanager
def _scratch(policy: VerifyPolicy, object_format: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A bare repository of `object_format` (sha1 or sha256) in a private directory, and the
    environment to verify in it with the policy's keys."""
    with keyring(policy) as env:
        repo = Path(env["HOME"]) / "objects.git"
        done = _run(["git", "init", "-q", "--bare", f"--object-format={object_format}", str(repo)],
                    Path(env["HOME"]), env)
        if done.returncode:
            raise StorageError(f"cannot make a scratch git repository to verify in: {_tail(done.stderr)}")
        yield repo, env


def _run(args: list[str], cwd: Path, env: Mapping[str, str],
         data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(args, cwd=cwd, env=dict(env), input=data, capture_output=True, timeout=VERIFY_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise InvalidConfig(f"verifying git signatures needs the `{args[0]}` command (git, gpg and ssh-keygen: "
                            "Debian's git, gnupg and openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise StorageError(f"{args[0]} {args[1]} did not finish within {VERIFY_TIMEOUT:.0f}s") from None


def _tail(data: bytes, limit: int = 200) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[-limit:]


# ---------------------------------------------------------------------- raw objects from parts
def commit_from_payload(payload: str, signature: str, *, sha256: bool = False) -> bytes:
    """The raw commit object a provider describes as its signed ``payload`` (the commit without
    its signature header) and the ``signature``: git puts the ``gpgsig`` header (``gpgsig-sha256``
    in SHA-256 repositories) after the other headers, continuation lines indented by one space."""
    head, sep, message = payload.partition("\n\n")
    header = "gpgsig-sha256" if sha256 else "gpgsig"
    lines = signature.rstrip("\n").split("\n")
    signed_header = f"{header} {lines[0]}" + "".join(f"\n {line}" for line in lines[1:])
    return (head + "\n" + signed_header + (sep or "\n\n") + message).encode("utf-8")


def tag_from_payload(payload: str, signature: str) -> bytes:
    """The raw tag object from a provider's ``payload`` (the tag without its signature) and
    ``signature``: a tag's signature follows its message."""
    return (payload + signature).encode("utf-8")
