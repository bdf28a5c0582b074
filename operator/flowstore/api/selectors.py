"""Kubernetes label selectors (the string form ``kubectl -l`` and ``?labelSelector=`` take), for
shards: ``flowstore operator --watch-label-selector SELECTOR``.

The API server filters the operator's watches with the selector's text; the operator parses it
itself too, for two reasons: a bad selector is refused when the operator starts (not by a watch
that fails forever), and the operator must tell whether an object it read by name (a
StoredFlow's FlowStorage) is in its shard. The grammar is the API server's (apimachinery's
``labels.Parse``) without the rarely used ``key>N`` / ``key<N``:

- ``key=value``, ``key==value``, ``key!=value``
- ``key in (v1,v2)``, ``key notin (v1,v2)``
- ``key`` (exists), ``!key`` (does not exist)

joined by commas (all must hold). An empty selector selects everything.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

#: the label key that puts a FlowStorage or StoredFlow into a shard (ARCHITECTURE.md, "shards")
SHARD_LABEL = "flowstore.dev/shard"

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


class SelectorError(ValueError):
    """Not a label selector; the message says which part and why."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    #: "=", "!=", "in", "notin", "exists", "!exists"
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A parsed selector: :meth:`matches` decides as the API server does; ``str()`` is its
    canonical text, what the watches send."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(req.matches(labels or {}) for req in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(req) for req in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def shard(self) -> str | None:
        """The shard this selector serves when it is the usual ``flowstore.dev/shard=NAME``."""
        for req in self.requirements:
            if req.key == SHARD_LABEL and req.op in ("=", "in") and len(req.values) == 1:
                return req.values[0]
        return None


def parse(text: str) -> LabelSelector:
    """Parse `text` or raise :class:`SelectorError` naming the bad part."""
    return LabelSelector(tuple(_requirement(part) for part in _split(text)))


def _split(text: str) -> list[str]:
    """Split at the commas outside ``(...)``."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in label selector {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unbalanced '(' in label selector {text!r}")
    parts.append("".join(current))
    stripped = [p.strip() for p in parts]
    if stripped == [""]:
        return []
    if "" in stripped:
        raise SelectorError(f"empty requirement in label selector {text!r}")
    return stripped


def _requirement(part: str) -> Requirement:
    if match := _SET.match(part):
        values = tuple(v.strip() for v in match["values"].split(","))
        if not values or any(not _VALUE.match(v) for v in values) or values == ("",):
            raise SelectorError(f"bad value list in {part!r} (label values: up to 63 of [A-Za-z0-9-_.])")
        return Requirement(_key(match["key"], part), match["op"], tuple(sorted(set(values))))
    if match := _EQ.match(part):
        if not _VALUE.match(match["value"]):
            raise SelectorError(f"bad label value in {part!r} (up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends)")
        op = "!=" if match["op"] == "!=" else "="
        return Requirement(_key(match["key"], part), op, (match["value"],))
    if part.startswith("!"):
        return Requirement(_key(part[1:].strip(), part), "!exists")
    if re.search(r"[\s=!<>()]", part):
        raise SelectorError(f"not a label requirement: {part!r} (use key=value, key!=value, key in (a,b), "
                            "key notin (a,b), key or !key)")
    return Requirement(_key(part, part), "exists")


def _key(key: str, part: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if not _NAME.match(name) or (slash and (not _PREFIX.match(prefix) or len(prefix) > 253)):
        raise SelectorError(f"bad label key {key!r} in {part!r} (an optional DNS-subdomain prefix and '/', "
                            "then up to 63 of [A-Za-z0-9-_.])")
    return key
