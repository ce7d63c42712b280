"""The README's ```python blocks for the tests that run them (tests/test_readme.py, tests/test_interop.py),
and `shrunk` for the sizes that would take minutes on a CPU."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippets() -> dict[str, str]:
    """Every ```python block of the README, keyed by the heading of its section."""
    snippets, heading = {}, ""
    for block in re.split(r"^(## .*)$", README.read_text(encoding="utf-8"), flags=re.MULTILINE):
        if block.startswith("## "):
            heading = block[3:].strip()
            continue
        for number, code in enumerate(re.findall(r"^```python\n(.*?)^```", block, re.MULTILINE | re.DOTALL)):
            snippets[heading if number == 0 else f"{heading} ({number + 1})"] = code
    return snippets


def shrunk(code: str, replacements: dict[str, str]) -> str:
    """`code` with each of `replacements` made; a replacement that no longer matches fails the test, so
    the README and this test change together."""
    for old, new in replacements.items():
        assert old in code, f"the README snippet no longer contains {old!r}"
        code = code.replace(old, new)
    return code
