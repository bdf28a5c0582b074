"""The agent cache (flowstore.artifacts.cache) trusts nothing on disk, stays within its bound, and
stays whole while several processes load from it and prune it at once.

Real files, real processes, real flocks; the tests run as whichever user runs them (root in CI
containers: "another user" is then a file chowned to another uid)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowstore.artifacts import bundle, loading
from flowstore.artifacts.bundle import Entrypoint
from flowstore.artifacts.cache import Cache, CacheError, Settings, parse_duration, parse_size

MAIN = b"from flowstore.flow import Flow\nfrom etl import helpers\nflow = Flow('etl daily', helpers.run)\n"
HELPERS = b"def run():\n    return 'the stored code'\n"
EVIL = b"import pathlib\npathlib.Path({marker!r}).write_text('ran')\ndef run():\n    return 'planted'\n"
FILES = {"etl/__init__.py": b"", "etl/main.py": MAIN, "etl/helpers.py": HELPERS}
OTHER_UID = 4242


def packed(files: dict[str, bytes] = FILES) -> bytes:
    return bundle.pack(files, Entrypoint.parse("etl/main.py:flow"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache_at(root: Path, **settings: Any) -> Cache:
    return Cache(Settings(root=root, **settings))


def load(data: bytes, root: Path) -> Any:
    return loading.load(data, "bundle", flow_name="etl daily", cache=cache_at(root))


def planted_tree(root: Path, data: bytes, marker: Path) -> Path:
    """A tree at bundles/<digest> (digests are public) whose helpers would write `marker`."""
    tree = root / "bundles" / hashlib.sha256(data).hexdigest()
    (tree / "etl").mkdir(parents=True)
    for path, content in FILES.items():
        (tree / path).write_bytes(content)
    (tree / "etl" / "helpers.py").write_bytes(EVIL.replace(b"{marker!r}", repr(str(marker)).encode()))
    return tree


# --------------------------------------------------------------------------- nothing on disk is trusted
def test_an_edited_file_in_an_extracted_bundle_never_runs(tmp_path: Path) -> None:
    data, marker = packed(), tmp_path / "marker"
    assert load(data, tmp_path / "cache").run() == "the stored code"
    helpers = tmp_path / "cache" / "bundles" / hashlib.sha256(data).hexdigest() / "etl" / "helpers.py"
    helpers.chmod(0o600)
    helpers.write_bytes(EVIL.replace(b"{marker!r}", repr(str(marker)).encode()))
    assert load(data, tmp_path / "cache").run() == "the stored code"  # checked, extracted again
    assert not marker.exists() and helpers.read_bytes() == HELPERS


@pytest.mark.parametrize("owner", ["this user", "another user"])
def test_a_directory_planted_at_a_digest_is_never_imported(tmp_path: Path, owner: str) -> None:
    data, marker = packed(), tmp_path / "marker"
    root = tmp_path / "cache"
    (root / "bundles").mkdir(parents=True, mode=0o700)
    tree = planted_tree(root, data, marker)
    if owner == "another user":
        if os.geteuid() != 0:
            pytest.skip("chown to another uid needs root")  # pragma: no cover - CI runs as root
        for path in [tree, *tree.rglob("*")]:
            os.chown(path, OTHER_UID, OTHER_UID)
    assert load(data, root).run() == "the stored code"
    assert not marker.exists()
    assert (tree / "etl" / "helpers.py").read_bytes() == HELPERS and tree.stat().st_uid == os.geteuid()


def test_a_symlink_planted_at_a_digest_is_never_followed(tmp_path: Path) -> None:
    data, marker = packed(), tmp_path / "marker"
    elsewhere = tmp_path / "elsewhere"
    planted = planted_tree(elsewhere, data, marker)
    root = tmp_path / "cache"
    (root / "bundles").mkdir(parents=True, mode=0o700)
    (root / "bundles" / planted.name).symlink_to(planted)
    (root / "artifacts").mkdir(mode=0o700)
    (elsewhere / "artifact").write_bytes(data)
    (root / "artifacts" / planted.name).symlink_to(elsewhere / "artifact")
    cache = cache_at(root)
    fetched: list[int] = []
    got, downloaded = cache.artifact(digest_of(data), lambda: fetched.append(1) or data, size=len(data))
    assert (got, downloaded, fetched) == (data, True, [1]), "a link is not an entry, even to the right bytes"
    assert not (root / "artifacts" / planted.name).is_symlink()
    assert load(data, root).run() == "the stored code"
    assert not marker.exists() and not (root / "bundles" / planted.name).is_symlink()
    assert (planted / "etl" / "helpers.py").read_bytes() != HELPERS, "the link's target was left alone"


def test_cached_bytes_of_another_user_or_the_wrong_size_are_not_served(tmp_path: Path) -> None:
    data = b"print('stored')\n"
    cache = cache_at(tmp_path / "cache")
    cache.artifact(digest_of(data), lambda: data)
    entry = tmp_path / "cache" / "artifacts" / hashlib.sha256(data).hexdigest()
    calls: list[int] = []
    assert cache.artifact(digest_of(data), lambda: calls.append(1) or data, size=len(data) + 1)[1] is True
    if os.geteuid() == 0:
        os.chown(entry, OTHER_UID, OTHER_UID)
        assert cache.artifact(digest_of(data), lambda: calls.append(1) or data)[1] is True
        assert entry.stat().st_uid == 0
    entry.chmod(0o666)  # writable by others: not an entry either
    assert cache.artifact(digest_of(data), lambda: calls.append(1) or data)[1] is True
    assert cache.artifact(digest_of(data), lambda: calls.append(1) or data)[1] is False


def test_a_cache_others_may_write_is_refused_with_what_to_do(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheError, match=r"not private: .*shared may be written by other users \(mode 0777\)"):
        cache_at(shared / "cache").artifact(digest_of(b"x"), lambda: b"x")
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert cache_at(shared / "cache").artifact(digest_of(b"x"), lambda: b"x") == (b"x", True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "artifacts").mkdir(mode=0o777)
    (tmp_path / "mine" / "artifacts").chmod(0o777)
    with pytest.raises(CacheError, match="not a directory of this user"):
        cache_at(tmp_path / "mine").artifact(digest_of(b"x"), lambda: b"x")


def test_settings_come_from_the_environment_and_bad_values_say_so() -> None:
    settings = Settings.from_environment({"FLOWSTORE_CACHE_DIR": "/var/cache/agent", "FLOWSTORE_CACHE_MAX_BYTES": "2Gi",
                                          "FLOWSTORE_CACHE_MIN_AGE": "1h"})
    assert (settings.root, settings.max_bytes, settings.min_age) == (Path("/var/cache/agent"), 2 * 2**30, 3600.0)
    assert parse_size("500M", what="x") == 500 * 10**6 and parse_size("64k", what="x") == 64_000
    assert parse_duration("90s", what="x") == 90 and parse_duration("600", what="x") == 600
    bad = ({"FLOWSTORE_CACHE_MAX_BYTES": "lots"}, {"FLOWSTORE_CACHE_MIN_AGE": "soon"}, {"FLOWSTORE_CACHE_DIR": ""})
    for env in bad:
        with pytest.raises(CacheError, match=next(iter(env))):
            Settings.from_environment(env)


# --------------------------------------------------------------------------- bounded, least recently used
def fill(cache: Cache, count: int, size: int = 1000) -> list[str]:
    digests = []
    for i in range(count):
        data = i.to_bytes(4, "big") * (size // 4)
        cache.artifact(digest_of(data), lambda data=data: data)
        digests.append(digest_of(data))
    return digests


def age(cache: Cache, digest: str, seconds_ago: float) -> None:
    """Set an entry's last use `seconds_ago` (the use-lock's and the artifact's mtimes)."""
    key = digest.removeprefix("sha256:")
    when = time.time() - seconds_ago
    for path in (cache.root / "locks" / f"{key}.use", cache.root / "artifacts" / key):
        if path.exists():
            os.utime(path, (when, when))


def test_prune_evicts_the_least_recently_used_past_the_minimum_age(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "cache", max_bytes=10**9, min_age=600)
    digests = fill(cache, 10)
    for i, digest in enumerate(digests):  # digest 0 used longest ago
        age(cache, digest, 10_000 - i * 100)
    age(cache, digests[9], 5)  # used a moment ago: too young to go, whatever the bound
    dry = cache.prune(dry_run=True, max_bytes=4000)
    assert [e.digest for e in dry.evicted] == digests[:6] and dry.dry_run
    assert len(cache.entries()) == 10, "a dry run removes nothing"
    done = cache.prune(max_bytes=4000)
    assert [e.digest for e in done.evicted] == digests[:6] and done.total_after == 4000
    assert {e.digest for e in cache.entries()} == set(digests[6:])
    assert cache.prune(max_bytes=0).evicted and [e.digest for e in cache.entries()] == [digests[9]]


def _hold(root: str, digest: str, ready: Any, done: Any) -> None:
    with Cache(Settings(root=Path(root))).use(digest):
        ready.set()
        done.wait(60)


def test_entries_in_use_or_pinned_are_never_evicted(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "cache", max_bytes=10**9, min_age=0)
    held, pinned, free = fill(cache, 3)
    cache.artifact(pinned, lambda: b"unused", pin=True)  # this process pins it (as a pull step does)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(cache.root), held, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        listed = {e.digest: e.in_use for e in cache.entries()}
        assert listed == {held: True, pinned: True, free: False}
        result = cache.prune(max_bytes=0)
        assert [e.digest for e in result.evicted] == [free]
        assert {e.digest for e in cache.entries()} == {held, pinned}
    finally:
        done.set()
        holder.join(30)
    assert [e.digest for e in cache.prune(max_bytes=0).evicted] == [held], "released: evictable"
    cache.release(pinned)
    assert [e.digest for e in cache.prune(max_bytes=0).evicted] == [pinned]


def test_adding_an_entry_keeps_the_cache_within_its_bound(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "cache", max_bytes=3000, min_age=0)
    fill(cache, 8)
    assert sum(e.size for e in cache.entries()) <= 3000


def test_leftovers_of_a_process_that_died_mid_fill_are_removed(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "cache", min_age=0)
    fill(cache, 1)
    stale = [cache.root / "artifacts" / ".0123456789abcdef.tmp", cache.root / "bundles" / ".0123456789abcdef.x"]
    stale[0].write_bytes(b"partial")
    stale[1].mkdir()
    old = time.time() - 7200
    for path in stale:
        os.utime(path, (old, old))
    cache.prune()
    assert not any(p.exists() for p in stale)


# --------------------------------------------------------------------------- several processes at once
LOADER = r"""
import hashlib, json, random, sys, time
from pathlib import Path
from flowstore.artifacts import bundle
from flowstore.artifacts.cache import Cache, Settings

root, bundles_file, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
datas = [bytes.fromhex(h) for h in json.loads(open(bundles_file).read())]
cache = Cache(Settings(root=root, max_bytes=0, min_age=0))
loads = downloads = 0
end = time.time() + seconds
while time.time() < end:
    data = random.choice(datas)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with cache.use(digest):
        got, fetched = cache.artifact(digest, lambda: data)
        assert got == data, "torn or wrong artifact"
        unpacked = bundle.unpack(got)
        tree = cache.bundle(digest, unpacked, pin=False)
        for path, content in unpacked.files.items():
            assert (tree / path).read_bytes() == content, f"torn tree at {path}"
    loads += 1
    downloads += fetched
print(json.dumps({"loads": loads, "downloads": downloads}))
"""

PRUNER = r"""
import json, sys, time
from pathlib import Path
from flowstore.artifacts.cache import Cache, Settings

cache = Cache(Settings(root=Path(sys.argv[1]), max_bytes=0, min_age=0))
evicted = 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    evicted += len(cache.prune().evicted)
print(json.dumps({"evicted": evicted}))
"""


def test_concurrent_loads_during_a_prune_never_see_a_torn_entry(tmp_path: Path) -> None:
    """Four loader processes take random bundles (artifact bytes and extracted tree) from one
    cache while a fifth prunes it to nothing in a loop: every load gets whole, correct files,
    nothing crashes, and the pruner really evicted entries between loads."""
    rng = random.Random(7)
    datas = [packed({**FILES, "etl/helpers.py": HELPERS + f"# {i}\n".encode(),
                     "etl/data.bin": rng.randbytes(20_000)}) for i in range(6)]
    (tmp_path / "bundles.json").write_text(json.dumps([d.hex() for d in datas]))
    root = tmp_path / "cache"
    seconds = "6"
    loaders = [subprocess.Popen([sys.executable, "-c", LOADER, str(root), str(tmp_path / "bundles.json"), seconds],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    pruner = subprocess.Popen([sys.executable, "-c", PRUNER, str(root), seconds], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=120) for p in [*loaders, pruner]]
    assert [p.returncode for p in [*loaders, pruner]] == [0] * 5, [err[-2000:] for _, err in outputs]
    loads = [json.loads(out) for out, _ in outputs[:4]]
    evicted = json.loads(outputs[4][0])["evicted"]
    assert all(r["loads"] > 0 for r in loads)
    assert evicted > 0 and sum(r["downloads"] for r in loads) > len(datas), \
        f"the prune never got between loads (evicted {evicted}): the test proved nothing"


# --------------------------------------------------------------------------- the CLI
def test_flowstore_cache_ls_and_prune(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "cache")
    digests = fill(cache, 3)
    for digest in digests:
        age(cache, digest, 3600)
    env = {**os.environ, "FLOWSTORE_CACHE_DIR": str(cache.root), "FLOWSTORE_CACHE_MIN_AGE": "10m"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flowstore.cli", "cache", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    listed = cli("ls")
    assert listed.returncode == 0, listed.stderr
    assert all(d[:23] in listed.stdout for d in digests) and "3 entries" in listed.stdout
    as_json = json.loads(cli("ls", "-o", "json").stdout)
    assert [e["digest"] for e in as_json["entries"]] == sorted(digests) or len(as_json["entries"]) == 3
    dry = cli("prune", "--dry-run", "--max-bytes", "1000")
    assert dry.returncode == 0 and dry.stdout.count("would evict sha256:") == 2, dry.stdout
    assert len(cache.entries()) == 3
    done = cli("prune", "--max-bytes", "1000")
    assert done.returncode == 0 and done.stdout.count("evicted sha256:") == 2 and len(cache.entries()) == 1
    bad = subprocess.run([sys.executable, "-m", "flowstore.cli", "cache", "ls"], capture_output=True, text=True,
                         env={**env, "FLOWSTORE_CACHE_MAX_BYTES": "plenty"}, timeout=60)
    assert bad.returncode == 2, bad.stderr  # the environment is not ready: flowstore.cli_errors
    assert bad.stderr.startswith("flowstore: FLOWSTORE_CACHE_MAX_BYTES='plenty' is not a size")
