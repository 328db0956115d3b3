"""The README's relative links point at files that exist and its #anchors at headings it has.

The README cites its figures and analysis scripts by relative link; a renamed figure or heading would
otherwise break silently. Anchors follow GitHub's rule: lower case, punctuation dropped, spaces to hyphens,
``-1``, ``-2`` ... for repeated headings."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor GitHub gives the headings of `markdown` (outside code blocks)."""
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = github_anchor(heading)
        out.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def test_github_anchor_rule():
    assert github_anchor("Real CT: LIDC crops (`../shared/data/lidc-crops`)") == (
        "real-ct-lidc-crops-shareddatalidc-crops"
    )
    assert anchors("# A b\n## A b\n```\n# not a heading\n```\n") == {"a-b", "a-b-1"}


def test_relative_links_and_anchors_resolve():
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    known = anchors(text)
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        resolves = (path.parent / file_part).exists() if file_part else anchor in known
        if not resolves:
            broken.append(target)
    assert not broken, f"README.md links to nothing: {broken}"
