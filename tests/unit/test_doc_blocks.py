"""How tests/docs reads the docs (tests/helpers/doc_blocks.py): which blocks run, what a claimed
output line matches, and that a drifted claim is caught."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.doc_blocks import ROOT, Block, blocks, console_claims, in_running_order, unmatched

KUBECTL = """\
NAMESPACE        NAME        READY   SUSPENDED   LOCATION                 AGE   MESSAGE
data             etl-daily   True                quickstart/etl-daily/t   23s   Stored at s3://flows/quickstart/etl-daily/t
flowstore-demo   cleanup     True                /x/cleanup/2026          5m    Stored at file:///x/cleanup/2026
flowstore-demo   etl-daily   True                prod/etl-daily/t         5m    Stored at s3://flows/prod/etl-daily/t
"""


def test_claims_match_with_ellipses_and_any_spacing() -> None:
    claimed = ["NAMESPACE NAME READY SUSPENDED LOCATION AGE MESSAGE",
               "data etl-daily True quickstart/etl-daily/… … Stored at s3://flows/quickstart/etl-daily/…",
               "…",
               "flowstore-demo   etl-daily   True   prod/etl-daily/…   …   Stored at s3://flows/prod/etl-daily/…"]
    assert unmatched(claimed, KUBECTL) == []


def test_a_drifted_claim_is_caught() -> None:
    assert unmatched(["NAME READY LOCATION AGE MESSAGE"], KUBECTL) == ["NAME READY LOCATION AGE MESSAGE"]
    assert unmatched(["data etl-daily False …"], KUBECTL) == ["data etl-daily False …"]
    # order matters: a claimed line before another must come before it
    assert unmatched(["flowstore-demo etl-daily …", "data etl-daily …"], KUBECTL) == ["data etl-daily …"]


def test_directives_and_console_claims(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "probe.md"
    text = ("<!-- docs-test: skip (needs a real cluster: tests/cluster runs it) -->\n```sh\nhelm install x\n```\n\n"
            "```console\n$ flowstore run etl \\\n  -n data\n{\"flow\": \"etl\"}\n$ true\n```\n\n"
            "<!-- docs-test: last (stops everything) -->\n```sh\nmake demo-down\n```\n\n```yaml\na: 1\n```\n")
    probe = tmp_path / "probe.md"
    probe.write_text(text)
    found = [Block(doc, b.line, b.lang, b.text, b.directive, b.argument) for b in blocks(probe)]
    assert [(b.lang, b.directive, b.runs) for b in found] == [
        ("sh", "skip", False), ("console", "", True), ("sh", "last", True), ("yaml", "", False)]
    assert found[0].argument == "needs a real cluster: tests/cluster runs it"
    claims = console_claims(found[1])
    assert [(c.command, c.output) for c in claims] == [("flowstore run etl \\\n  -n data", ['{"flow": "etl"}']),
                                                       ("true", [])]
    assert [b.lang for b in in_running_order(found)] == ["console", "sh"]  # `last` last
