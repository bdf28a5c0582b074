"""No silent downgrades: the agent's memory of the newest statement it verified per StoredFlow."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path

import pytest

from flowstore.artifacts.freshness import Freshness, RollbackRefused, StateError
from flowstore.artifacts.statement import Statement

UID = "6f1c2d3e-0000-4000-8000-000000000001"


def stmt(revision: int, designation: int, *, uid: str = UID, digest: str | None = None) -> Statement:
    return Statement(namespace="data", stored_flow="etl", uid=uid, flow_name="etl", revision=revision,
                     designation=designation, digest=digest or f"sha256:{revision:064x}", size=1, format="script",
                     storage={"type": "Local"}, location="etl.py", stored_at="2026-11-26T10:00:00Z")


def test_older_designation_is_refused_unless_pinned(tmp_path: Path):
    memory = Freshness(tmp_path)
    assert memory.admit(stmt(1, 1), "k", pinned=False, what="etl") is None
    memory.admit(stmt(2, 2), "k", pinned=False, what="etl")
    with pytest.raises(RollbackRefused, match=r"revision 1 \(designation 1\).*verified revision 2 \(designation 2\)"):
        memory.admit(stmt(1, 1), "k", pinned=False, what="etl")
    memory.admit(stmt(1, 1), "k", pinned=True, what="etl")  # a deliberate rollback
    seen = memory.seen("data", "etl")
    assert seen is not None and (seen.revision, seen.designation) == (2, 2)  # a pinned load lowers nothing


def test_a_revert_is_a_new_designation_and_is_accepted(tmp_path: Path):
    memory = Freshness(tmp_path)
    memory.admit(stmt(1, 1), "k", pinned=False, what="etl")
    memory.admit(stmt(2, 2), "k", pinned=False, what="etl")
    memory.admit(stmt(1, 3), "k", pinned=False, what="etl")  # GitOps revert: revision 1 current again
    with pytest.raises(RollbackRefused):
        memory.admit(stmt(2, 2), "k", pinned=False, what="etl")  # the superseded statement replayed


def test_a_retained_revisions_statement_never_passes_for_the_current_one(tmp_path: Path):
    memory = Freshness(tmp_path)
    with pytest.raises(RollbackRefused, match="statement of a retained revision"):
        memory.admit(stmt(1, 0), "k", pinned=False, what="etl")
    memory.admit(stmt(1, 0), "k", pinned=True, what="etl")


def test_same_designation_must_name_the_same_revision(tmp_path: Path):
    memory = Freshness(tmp_path)
    memory.admit(stmt(2, 2), "k", pinned=False, what="etl")
    memory.admit(stmt(2, 2), "k2", pinned=False, what="etl")  # re-signed with a new key: fine
    with pytest.raises(RollbackRefused, match="cannot share a designation"):
        memory.admit(stmt(3, 2), "k", pinned=False, what="etl")


def test_a_recreated_storedflow_starts_afresh(tmp_path: Path):
    memory = Freshness(tmp_path)
    memory.admit(stmt(5, 9), "k", pinned=False, what="etl")
    memory.admit(stmt(1, 1, uid="6f1c2d3e-0000-4000-8000-00000000000f"), "k", pinned=False, what="etl")
    seen = memory.seen("data", "etl")
    assert seen is not None and seen.designation == 1


def _admit_many(root: str, start: int) -> None:
    memory = Freshness(Path(root))
    for designation in range(start, start + 40):
        try:
            memory.admit(stmt(designation, designation), "k", pinned=False, what="etl")
        except RollbackRefused:
            pass  # another process got further first: refused, as it should be


def test_concurrent_processes_never_lose_the_highest_designation(tmp_path: Path):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_admit_many, args=(str(tmp_path), start)) for start in (1, 11, 21, 31)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    seen = Freshness(tmp_path).seen("data", "etl")
    assert seen is not None and seen.designation == 70
    assert sorted(p.name for p in (tmp_path / "verified").iterdir() if not p.name.startswith(".")) == \
        [Freshness(tmp_path).path_for("data", "etl").name]


def test_unsafe_state_is_refused_not_trusted(tmp_path: Path):
    memory = Freshness(tmp_path)
    memory.admit(stmt(1, 1), "k", pinned=False, what="etl")
    path = memory.path_for("data", "etl")
    path.write_text("{not json")
    with pytest.raises(StateError, match="delete it"):
        memory.admit(stmt(2, 2), "k", pinned=False, what="etl")
    path.unlink()
    os.symlink(tmp_path / "elsewhere.json", path)
    with pytest.raises(StateError):
        memory.admit(stmt(2, 2), "k", pinned=False, what="etl")
    path.unlink()
    (tmp_path / "verified").chmod(0o777)
    with pytest.raises(StateError, match="nobody else can write"):
        memory.admit(stmt(2, 2), "k", pinned=False, what="etl")


def test_state_is_small_and_says_what_it_is(tmp_path: Path):
    memory = Freshness(tmp_path)
    memory.admit(dataclasses.replace(stmt(3, 4)), "ed25519:abc", pinned=False, what="etl")
    text = memory.path_for("data", "etl").read_text()
    assert len(text) < 400 and '"storedFlow": "etl"' in text and '"designation": 4' in text
