"""The condition vocabulary is one list: every reason the operator can set is declared in
``api.constants.Reason``, and every declared reason can be set somewhere.

Read from the source with ``ast`` so that it covers code paths no other unit test reaches, and
the stdlib-only programs (the builder, the sandbox runner) that cannot import ``Reason`` and so
spell reasons as strings."""

from __future__ import annotations

import ast
from pathlib import Path

import flowstore
from flowstore.api.constants import EventReason, Reason

PACKAGE = Path(flowstore.__file__).parent


def _declared(cls: type) -> dict[str, str]:
    return {k: v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


def _scan() -> tuple[set[str], set[str], list[str]]:
    """(attributes used as ``Reason.X``, reasons spelled as string literals, where literals are)."""
    attrs: set[str] = set()
    literals: set[str] = set()
    where: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "api" / "constants.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "Reason"):
                attrs.add(node.attr)
            found: list[ast.expr] = []
            if isinstance(node, ast.Dict):
                found += [v for k, v in zip(node.keys, node.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == "reason"]
            if isinstance(node, ast.Call):
                found += [kw.value for kw in node.keywords if kw.arg == "reason"]
                if isinstance(node.func, ast.Name) and node.func.id == "_Failed" and node.args:
                    found.append(node.args[0])
            for value in found:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    literals.add(value.value)
                    where.append(f"{path.relative_to(PACKAGE)}:{value.lineno} {value.value}")
    return attrs, literals, where


def test_every_reason_used_is_declared():
    attrs, _, where = _scan()
    declared = _declared(Reason)
    assert attrs - declared.keys() == set()
    undeclared = [w for w in where if w.rsplit(" ", 1)[1] not in declared.values()]
    assert undeclared == [], "reasons spelled as strings must be values of Reason"


def test_every_declared_reason_is_used():
    attrs, literals, _ = _scan()
    unused = {k for k, v in _declared(Reason).items() if k not in attrs and v not in literals}
    assert unused == set(), "declared reasons nothing sets: remove them or use them"


def test_string_reasons_only_in_programs_that_cannot_import_flowstore():
    # The builder and the sandbox runner run in other interpreters (the flow's image, a
    # constrained subprocess) with the standard library only; everything else uses Reason.X.
    *_, where = _scan()
    files = {w.split(":", 1)[0] for w in where}
    assert files <= {"artifacts/builder.py", "sandbox/_runner.py"}, files


def test_reasons_are_unique_camelcase_words():
    values = list(_declared(Reason).values()) + list(_declared(EventReason).values())
    assert len(values) == len(set(values))
    for value in values:
        assert value[0].isupper() and value.isalnum(), value


def test_the_scan_sees_reasons():
    # guards the scan itself: if it found nothing the other tests would pass vacuously
    attrs, literals, _ = _scan()
    assert {"SUCCEEDED", "BUILD_IMAGE_UNUSABLE", "PUSH_FAILED"} <= attrs
    assert {"ScriptFailed", "Unpicklable", "BuildImageUnusable"} <= literals


def test_every_event_reason_is_posted():
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "EventReason"):
                used.add(node.attr)
    assert set(_declared(EventReason)) <= used
