"""Every relative link in the README and docs/ resolves, and docs/README.md indexes every document.

The README's settings table against ``BackupSettings`` is checked by ``test_foundation_docs.py``
(``scripts/settings_table.py --check``); it is not repeated here.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed (links there are examples)."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else INLINE_CODE.sub("", line))
    return lines


def link_targets(text: str) -> list[str]:
    prose = "\n".join(prose_lines(text))
    return INLINE_LINK.findall(prose) + REFERENCE_DEFINITION.findall(prose)


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    kept = [
        ch
        for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N") or unicodedata.category(ch) == "Mn"
    ]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, root: Path = REPO_ROOT) -> list[str]:
    problems: list[str] = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        if EXTERNAL.match(target) or target.startswith("//"):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.exists():
            shown = resolved.relative_to(root) if resolved.is_relative_to(root) else resolved
            problems.append(f"{target}: {shown} does not exist")
            continue
        if fragment and resolved.suffix == ".md" and unquote(fragment).lower() not in anchors(resolved):
            problems.append(f"{target}: no heading #{fragment} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == [], f"broken links in {path.relative_to(REPO_ROOT)}"


def test_docs_index_lists_every_document() -> None:
    index = DOCS / "README.md"
    listed = {
        (index.parent / unquote(t.partition("#")[0])).resolve() for t in link_targets(index.read_text())
    }
    missing = [
        str(p.relative_to(REPO_ROOT)) for p in sorted(DOCS.rglob("*.md")) if p != index and p not in listed
    ]
    assert missing == [], "docs/README.md does not link to these documents"


def test_checker_finds_what_it_should(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are found; code is ignored."""
    (tmp_path / "other.md").write_text("# Read this first: who can reach the UI\n## Schritt 2 — Über\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#read-this-first-who-can-reach-the-ui) [ok2](other.md#schritt-2--über)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [web](https://example.com/x.md)\n"
        "`[in code](absent.md)`\n```\n[in fence](absent2.md)\n```\n[ref]: ./missing-too.md\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert any("missing.md" in p for p in problems)
    assert any("#nope" in p for p in problems)
    assert any("missing-too.md" in p for p in problems)
