"""The README is a front door (at most 200 lines) and every relative link in it and in docs/*.md resolves.

Checks markdown links and images ``[text](target)`` / ``![alt](target)`` outside code: the target file exists
(relative to the linking file) and, when the link has a ``#fragment``, the target markdown file has a heading with
that GitHub-style anchor. External links (``http:``, ``https:``, ``mailto:``) are not fetched.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_EXTERNAL = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are examples, not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every markdown link or image target in ``text`` outside code, in order."""
    return _LINK.findall(_prose(text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading in a markdown text, with GitHub's ``-1``, ``-2`` suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for h in _HEADING.findall(_FENCE.sub("", text)):
        a = anchor(h)
        n = seen.get(a, 0)
        out.add(a if n == 0 else f"{a}-{n}")
        seen[a] = n + 1
    return out


def broken_links(path: Path) -> list[str]:
    """``'target: why'`` for each relative link in the markdown file ``path`` that does not resolve."""
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in links(text):
        if target.startswith(_EXTERNAL):
            continue
        file_part, _, frag = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
            continue
        if frag and dest.suffix == ".md" and frag not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading with anchor #{frag} in {dest}")
    return bad


def test_readme_is_at_most_200_lines():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == [], f"{path.relative_to(ROOT)} has broken links"


# --- the checker itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heading, expected", [
    ("Quickstart", "quickstart"),
    ("How the data flows (the design card)", "how-the-data-flows-the-design-card"),
    ("Production path (GPUs)", "production-path-gpus"),
    ("`make demo` — what it prints", "make-demo--what-it-prints"),
    ("Weight sync by mode, transport and size", "weight-sync-by-mode-transport-and-size"),
])
def test_anchor_table(heading, expected):
    assert anchor(heading) == expected


def test_checker_finds_broken_files_and_anchors_and_ignores_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Part two\n\n## Part two\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok anchor](docs/a.md#part-two) [repeat](docs/a.md#part-two-1) ![img](pic.png)\n"
        "[self](#top) [web](https://example.com/x) `[code](missing.md)`\n"
        "```\n[fenced](missing-too.md)\n```\n"
        "[gone](docs/b.md) ![gone img](nope.png) [bad anchor](docs/a.md#part-three)\n"
        "# Top\n"
    )
    bad = broken_links(page)
    assert [b.split(":")[0] for b in bad] == ["docs/b.md", "nope.png", "docs/a.md#part-three"]
