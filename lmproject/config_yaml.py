"""A run's YAML config read strictly, before a parser reads it: an empty file, a syntax error or a key given
twice is a UserError naming the file and the line. (jsonargparse said "Unexpected config:" for an empty
file, pointed a syntax error at `"<unicode string>"`, and let the last of two equal keys win silently.)"""

from __future__ import annotations

from typing import Any

import yaml

from lmproject.errors import UserError


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges: not a key of its own
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config_yaml(text: str, name: str) -> Any:
    """The YAML document `text` (the file or argument `name`, for the messages), checked: not empty (only
    comments counts as empty), valid YAML, no key twice in one mapping."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as dup:
        raise UserError(
            f"{name}: line {dup.line}: key {dup.key!r} is given twice (one value per key)"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} at line {start.line + 1})"
        raise UserError(f"{name}: not valid YAML: {where}{problem}") from None
    if document is None:
        raise UserError(f"{name}: is empty (expected YAML settings, e.g. `model: ...`)")
    return document
