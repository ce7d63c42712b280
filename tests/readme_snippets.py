"""The code blocks of README.md and docs/*.md, by page and section, for the tests that run or check them
(tests/test_readme.py, tests/test_interop.py), and `shrunk` for the sizes that would take minutes on a CPU."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md"))]


def blocks(page: str, language: str = "python") -> dict[str, str]:
    """Every ```language block of a page ("" for blocks without a language), keyed by the heading of its
    section (the page's title before its first `##`), numbered from the second block of a section on."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found, heading = {}, text.splitlines()[0].lstrip("# ")
    for part in re.split(r"^(## .*)$", text, flags=re.MULTILINE):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        pattern = rf"^ *```{re.escape(language)}\n(.*?)^ *```"
        for number, code in enumerate(re.findall(pattern, part, re.MULTILINE | re.DOTALL)):
            found[heading if number == 0 else f"{heading} ({number + 1})"] = code
    return found


def snippets(page: str) -> dict[str, str]:
    """The ```python blocks of a page, keyed by section heading."""
    return blocks(page)


def shrunk(code: str, replacements: dict[str, str]) -> str:
    """`code` with each of `replacements` made; a replacement that no longer matches fails the test, so
    the page and this test change together."""
    for old, new in replacements.items():
        assert old in code, f"the snippet no longer contains {old!r}"
        code = code.replace(old, new)
    return code
