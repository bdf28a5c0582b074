"""What Argo CD and kstatus make of flowstore's resources, computed the way those tools compute it.

Argo CD runs the health check of docs/argocd.md (helm/flowstore-operator/health/health.lua)
in gopher-lua with the `string` and `math` libraries closed unless argocd-cm opens them;
kstatus-based tools (Flux's health checks, cli-utils' own apply and wait, …) call
sigs.k8s.io/cli-utils' kstatus. So these tests do neither in Python nor in a stock Lua: they
build tests/health/ (a small Go program pinned to Argo CD's gopher-lua and gopher-json and to
cli-utils; see its main.go for which Argo CD code it mirrors) and ask it, for each object,
what Argo CD shows with the docs' argocd-cm as it stands, with the libraries forced closed and
forced open, and what kstatus computes.

The objects are statuses captured from the real operator (tests/fixtures/status/*.json,
re-captured by tests/fixtures/status/capture.py).

`python tests/test_argocd_health.py` regenerates the argocd-cm snippet of docs/argocd.md;
a test here checks it is current.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.health_harness import (
    ARGOCD_DOC,
    CM_BEGIN,
    CM_END,
    HEALTH_LUA,
    KINDS,
    ROOT,
    Obj,
    argocd,
    docs_argocd_cm,
    evaluate,
    fenced_yaml,
    generated_block,
    harness_binary,
    kstatus,
    render_argocd_cm,
    write_generated,
)

FIXTURES = ROOT / "tests" / "fixtures" / "status"


@pytest.fixture(scope="session")
def harness() -> Path:
    return harness_binary()


# --------------------------------------------------------------------------- the objects
def load(name: str) -> Obj:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def fixture_names() -> set[str]:
    return {p.relative_to(FIXTURES).with_suffix("").as_posix() for p in FIXTURES.rglob("*.json")}


def message(ctype: str) -> Callable[[Obj], str]:
    """The message the operator wrote in condition `ctype`."""
    def of(obj: Obj) -> str:
        return str(next(c["message"] for c in obj["status"]["conditions"] if c["type"] == ctype))
    return of


def text(value: str) -> Callable[[Obj], str]:
    return lambda _: value


def generation_not_observed(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} generation is {meta['generation']}, but latest observed generation is " \
           f"{obj['status']['observedGeneration']}"


@dataclass(frozen=True)
class Expect:
    argocd: tuple[str, Callable[[Obj], str]]
    kstatus: tuple[str, Callable[[Obj], str]]


WAITING_1 = ("Progressing", text("Waiting for the operator to observe generation 1"))
WAITING_2 = ("Progressing", text("Waiting for the operator to observe generation 2"))
RETRYING = Expect(("Progressing", message("Reconciling")), ("InProgress", message("Reconciling")))
STALLED = Expect(("Degraded", message("Stalled")), ("Failed", message("Stalled")))
READY = Expect(("Healthy", message("Ready")), ("Current", text("Resource is Ready")))
DELETING = Expect(("Progressing", text("Pending deletion")), ("Terminating", text("Resource scheduled for deletion")))
# What today's operator writes when suspended: Ready keeps its status with reason Suspended.
SUSPENDED_UNSTORED_TODAY = Expect(("Suspended", message("Ready")), ("InProgress", message("Ready")))
SUSPENDED_AFTER_READY_TODAY = Expect(("Suspended", message("Ready")), ("Current", text("Resource is Ready")))
SUSPENDED_AFTER_STALLED_TODAY = Expect(("Suspended", message("Ready")), ("Failed", message("Stalled")))

EXPECTED: dict[str, Expect] = {
    "storedflow-unobserved": Expect(WAITING_1, ("Current", text("Resource is current"))),
    "flowstorage-unobserved": Expect(WAITING_1, ("Current", text("Resource is current"))),
    "storedflow-new-generation": Expect(WAITING_2, ("InProgress", generation_not_observed)),
    "flowstorage-new-generation": Expect(WAITING_2, ("InProgress", generation_not_observed)),
    "storedflow-backend-unavailable": RETRYING,
    "storedflow-storage-missing": RETRYING,
    "flowstorage-backend-unavailable": RETRYING,
    "storedflow-stalled": STALLED,
    "flowstorage-secret-missing": STALLED,
    "storedflow-ready": READY,
    "flowstorage-ready": READY,
    "storedflow-suspended-from-start": SUSPENDED_UNSTORED_TODAY,
    "flowstorage-suspended-from-start": SUSPENDED_UNSTORED_TODAY,
    "storedflow-storage-suspended-from-start": SUSPENDED_UNSTORED_TODAY,
    "storedflow-suspended-after-ready": SUSPENDED_AFTER_READY_TODAY,
    "flowstorage-suspended-after-ready": SUSPENDED_AFTER_READY_TODAY,
    "storedflow-storage-suspended-after-ready": SUSPENDED_AFTER_READY_TODAY,
    "storedflow-suspended-after-stalled": SUSPENDED_AFTER_STALLED_TODAY,
    "flowstorage-suspended-after-stalled": SUSPENDED_AFTER_STALLED_TODAY,
    "storedflow-storage-suspended-after-stalled": SUSPENDED_AFTER_STALLED_TODAY,
    "storedflow-deleting": DELETING,
    "flowstorage-deleting": DELETING,
}


@pytest.fixture(scope="session")
def verdicts(harness: Path) -> dict[str, Any]:
    """Every fixture through the harness, in one run."""
    return evaluate(harness, {name: load(name) for name in sorted(fixture_names())})


def test_every_fixture_has_an_expectation() -> None:
    assert fixture_names() == set(EXPECTED), "add expectations for new captures (or re-run capture.py)"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argocd_health(verdicts: dict[str, Any], name: str) -> None:
    want_status, want_message = EXPECTED[name].argocd
    assert argocd(verdicts[name]) == (want_status, want_message(load(name)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kstatus(verdicts: dict[str, Any], name: str) -> None:
    want_status, want_message = EXPECTED[name].kstatus
    assert kstatus(verdicts[name]) == (want_status, want_message(load(name)))


def conditions(name: str) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (load(name).get("status") or {}).get("conditions", [])}


def test_fixtures_are_the_states_they_claim() -> None:
    """Guard against a re-capture that silently drifted (a reason renamed, a state not reached)."""
    for name in ("storedflow-unobserved", "flowstorage-unobserved"):
        assert "status" not in load(name), name
    for name in ("storedflow-new-generation", "flowstorage-new-generation", "storedflow-deleting",
                 "flowstorage-deleting"):
        obj = load(name)
        assert obj["metadata"]["generation"] > obj["status"]["observedGeneration"], name
    for name in ("storedflow-deleting", "flowstorage-deleting"):
        meta = load(name)["metadata"]
        assert meta["deletionTimestamp"] and meta["finalizers"] == ["flowstore.dev/cleanup"], name
    assert conditions("storedflow-storage-missing") == {"Ready": ("False", "StorageNotFound"),
                                                        "Reconciling": ("True", "StorageNotFound")}
    for name in ("storedflow-backend-unavailable", "flowstorage-backend-unavailable"):
        assert conditions(name) == {"Ready": ("False", "BackendUnavailable"),
                                    "Reconciling": ("True", "BackendUnavailable")}, name
    assert conditions("storedflow-stalled")["Stalled"] == ("True", "ScriptSyntaxError")
    assert conditions("flowstorage-secret-missing")["Stalled"] == ("True", "SecretNotFound")
    for kind in ("storedflow", "flowstorage"):
        assert conditions(f"{kind}-ready") == {"Ready": ("True", "Succeeded")}
        assert conditions(f"{kind}-suspended-from-start") == {"Ready": ("Unknown", "Suspended")}
        assert conditions(f"{kind}-suspended-after-ready") == {"Ready": ("True", "Suspended")}
        assert conditions(f"{kind}-suspended-after-stalled")["Ready"] == ("False", "Suspended")
        assert conditions(f"{kind}-suspended-after-stalled")["Stalled"][0] == "True"
        for when in ("from-start", "after-ready", "after-stalled"):
            assert load(f"{kind}-suspended-{when}")["spec"]["suspend"] is True
    for when, ready in (("from-start", "Unknown"), ("after-ready", "True"), ("after-stalled", "False")):
        name = f"storedflow-storage-suspended-{when}"
        assert load(name)["spec"]["suspend"] is False, name
        assert conditions(name)["Ready"] == (ready, "Suspended"), name
    assert conditions("storedflow-storage-suspended-after-stalled")["Stalled"] == ("True", "ScriptSyntaxError")


# --------------------------------------------------------------------------- the harness is faithful
LIBRARY_PROBE = """
local hs = {}
hs.status = "Healthy"
hs.message = string.format("%d flows, %d%%", 2, math.floor(99.5))
return hs
"""


def test_harness_closes_string_and_math_unless_argocd_cm_opens_them(harness: Path) -> None:
    """A closed-libraries run is only evidence if the libraries really are closed in it."""
    key = "resource.customizations.{}.flowstore.dev_StoredFlow"
    obj = {"probe": load("storedflow-ready")}
    closed = evaluate(harness, obj, {key.format("health"): LIBRARY_PROBE})["probe"]["argocd"]
    assert closed["configured"]["status"] == closed["closedLibs"]["status"] == "Unknown"
    assert "attempt to index a non-table object(nil) with key 'format'" in closed["closedLibs"]["message"]
    assert closed["openLibs"] == {"status": "Healthy", "message": "2 flows, 99%"}
    opened = evaluate(harness, obj, {key.format("health"): LIBRARY_PROBE, key.format("useOpenLibs"): "true"})
    assert opened["probe"]["argocd"]["configured"] == {"status": "Healthy", "message": "2 flows, 99%"}


def test_harness_reads_back_what_argo_cd_reads_back(harness: Path) -> None:
    """An invalid status is Unknown, a script error is Unknown with the error, and an object
    of a kind without a check has no health at all."""
    key = "resource.customizations.health.flowstore.dev_StoredFlow"
    obj = {"probe": load("storedflow-ready"), "other": load("flowstorage-ready")}
    got = evaluate(harness, obj, {key: 'return {status = "Fine", message = "x"}'})
    assert got["probe"]["argocd"]["closedLibs"] == {"status": "Unknown",
                                                    "message": "Lua returned an invalid health status"}
    assert got["other"]["argocd"]["closedLibs"] == {"status": "", "message": ""}
    got = evaluate(harness, obj, {key: 'error("boom")'})
    assert got["probe"]["argocd"]["closedLibs"]["status"] == "Unknown"
    assert "boom" in got["probe"]["argocd"]["closedLibs"]["error"]


def lua_code(source: str) -> str:
    """The script without comments and string literals (what remains is code)."""
    source = re.sub(r"--[^\n]*", "", source)
    return re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', source)


def test_check_calls_no_library_function_argo_cd_keeps_closed() -> None:
    """Belt and braces for branches no fixture reaches: no string/math/os/io, no string methods."""
    code = lua_code(HEALTH_LUA.read_text())
    assert not re.findall(r"\b(?:string|math|os|io|debug|utf8)\s*\.", code)
    assert not re.findall(r"[\w)\]\"]\s*:\s*[A-Za-z_]\w*\s*\(", code), "method call (e.g. s:sub()) needs string"


# --------------------------------------------------------------------------- branches no capture reaches
# Each case edits a captured object down to what the branch is about.
def with_conditions(obj: Obj, *conds: tuple[str, str, str]) -> Obj:
    obj = copy.deepcopy(obj)
    obj["status"]["conditions"] = [
        {"type": t, "status": s, "reason": r, "message": f"{t} {r}", "observedGeneration": 1} for t, s, r in conds
    ]
    return obj


def edge_cases() -> dict[str, tuple[Obj, tuple[str, str]]]:
    ready = load("storedflow-ready")
    retrying = with_conditions(load("storedflow-backend-unavailable"), ("Ready", "False", "BackendUnavailable"),
                               ("Reconciling", "True", "BackendUnavailable"))
    del retrying["status"]["conditions"][1]["message"]
    suspend_unseen = copy.deepcopy(ready)
    suspend_unseen["spec"]["suspend"], suspend_unseen["metadata"]["generation"] = True, 2
    no_generation = copy.deepcopy(load("storedflow-unobserved"))
    del no_generation["metadata"]["generation"]
    awkward = 'quotes " and \\ backslash, newline\n, tab\t, unicode é ✓ ]] [[ %s %d'
    stalled = copy.deepcopy(load("storedflow-stalled"))
    stalled["status"]["conditions"][1]["message"] = awkward
    return {
        "Ready=False alone is Degraded": (with_conditions(ready, ("Ready", "False", "BackendError")),
                                          ("Degraded", "Ready BackendError")),
        "storing (Ready=Unknown, Reconciling=True) is Progressing": (
            with_conditions(ready, ("Ready", "Unknown", "Progressing"), ("Reconciling", "True", "Progressing")),
            ("Progressing", "Ready Progressing")),
        "Stalled wins over Ready=True": (
            with_conditions(ready, ("Ready", "True", "Succeeded"), ("Stalled", "True", "InvalidSpec")),
            ("Degraded", "Stalled InvalidSpec")),
        "retrying without Reconciling's message says Retrying and Ready's": (
            retrying, ("Progressing", "Retrying: Ready BackendUnavailable")),
        "no conditions yet is waiting": (with_conditions(ready),
                                         ("Progressing", "Waiting for the operator to observe generation 1")),
        "no Ready yet shows Reconciling's message": (
            with_conditions(ready, ("Reconciling", "True", "Progressing")), ("Progressing", "Reconciling Progressing")),
        "spec.suspend not yet acknowledged is Suspended": (
            suspend_unseen, ("Suspended", "spec.suspend is true; waiting for the operator to acknowledge it")),
        "no metadata.generation is waiting for the resource": (
            no_generation, ("Progressing", "Waiting for the operator to observe the resource")),
        "any message text comes through as written": (stalled, ("Degraded", awkward)),
    }


@pytest.fixture(scope="session")
def edge_verdicts(harness: Path) -> dict[str, Any]:
    return evaluate(harness, {name: obj for name, (obj, _) in edge_cases().items()})


@pytest.mark.parametrize("case", sorted(edge_cases()))
def test_argocd_health_edge_case(edge_verdicts: dict[str, Any], case: str) -> None:
    assert argocd(edge_verdicts[case]) == edge_cases()[case][1]


# --------------------------------------------------------------------------- docs
def test_docs_argocd_cm_is_the_script() -> None:
    block = generated_block(ARGOCD_DOC.read_text(), CM_BEGIN, CM_END)
    assert block == fenced_yaml(render_argocd_cm()), "docs/argocd.md is stale: run `python tests/test_argocd_health.py`"
    data = docs_argocd_cm()
    assert set(data) == {f"resource.customizations.health.flowstore.dev_{kind}" for kind in KINDS}
    assert all(script == HEALTH_LUA.read_text() for script in data.values())


if __name__ == "__main__":
    write_generated(ARGOCD_DOC, CM_BEGIN, CM_END, fenced_yaml(render_argocd_cm()))
    print(f"updated {ARGOCD_DOC.relative_to(ROOT)}", file=sys.stderr)
