"""The command blocks of README.md and docs/*.md, as tests/docs/test_docs.py runs them.

A fenced block is a command block when its info string is `sh`, `console` or `python`:
- `sh`: a bash script, run as written (`set -e -o pipefail`);
- `console`: `$ COMMAND` lines, each followed by the output the text claims for it; `…`
  anywhere in a claimed line stands for any text (a digest, a time), runs of spaces for any
  spaces (kubectl's columns), and the claimed lines must appear in the output in that order;
- `python`: a script for the `python` on PATH (the checkout's `.venv` once the text activates it).

An HTML comment on the line before a block tells the test what to do with it:
- `<!-- docs-test: skip (WHY) -->`: not run; the test lists it with WHY (which must say what
  runs it instead, or why nothing can);
- `<!-- docs-test: last (WHY) -->`: run after every other page's blocks (it stops what they use);
- `<!-- docs-test: file PATH -->` before a `yaml` block: every YAML document shown is one of
  PATH's, so a manifest quoted in the text is the file's.
Blocks run in order, README.md first, then docs/*.md by name, in one shell session: what a
block exports or `cd`s into holds for the next, as when a reader types them in one terminal.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = ("sh", "console", "python")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(skip|last|file)\b\s*(.*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence
    lang: str
    text: str
    directive: str = ""  # "", "skip", "last" or "file"
    argument: str = ""  # the reason (skip, last) or the path (file)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.directive != "skip"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    found: list[Block] = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        directive = DIRECTIVE.search(before)
        kind, argument = (directive.group(1), directive.group(2).strip()) if directive else ("", "")
        if kind in ("skip", "last"):
            argument = argument.removeprefix("(").removesuffix(")").strip()
        found.append(Block(doc, line, match.group(1), match.group(2), kind, argument))
    return found


def all_blocks() -> list[Block]:
    return [block for doc in documents() for block in blocks(doc)]


def in_running_order(every: list[Block]) -> list[Block]:
    runnable = [b for b in every if b.runs]
    return [b for b in runnable if b.directive != "last"] + [b for b in runnable if b.directive == "last"]


@dataclasses.dataclass(frozen=True)
class Claim:
    command: str
    output: list[str]  # the lines the text shows under it


def console_claims(block: Block) -> list[Claim]:
    """`$ COMMAND` (continued by a trailing backslash) and the output lines under it."""
    claims: list[Claim] = []
    continued = False
    for line in block.text.splitlines():
        if line.startswith("$ "):
            claims.append(Claim(line[2:], []))
            continued = line.endswith("\\")
        elif continued:
            claims[-1] = Claim(claims[-1].command + "\n" + line, claims[-1].output)
            continued = line.endswith("\\")
        elif claims:
            claims[-1].output.append(line)
        elif line.strip():
            raise ValueError(f"{block.where}: a console block starts with `$ COMMAND`, not {line!r}")
    return claims


def line_pattern(claimed: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in claimed.strip().split("…")]
    body = ".*?".join(parts)
    body = re.sub(r"(\\ )+", r"\\s+", body)  # re.escape escapes spaces: any run of them is any spacing
    return re.compile(rf"^\s*{body}\s*$")


def unmatched(claimed: list[str], output: str) -> list[str]:
    """The claimed lines not found in `output` in their order (empty: the text tells the truth)."""
    lines = output.splitlines()
    at = 0
    claimed = [c for c in claimed if c.strip() not in ("", "…")]  # a line of `…` alone: any lines, or none
    for index, claim in enumerate(claimed):
        pattern = line_pattern(claim)
        while at < len(lines) and not pattern.match(lines[at]):
            at += 1
        if at == len(lines):
            return claimed[index:]
        at += 1
    return []
