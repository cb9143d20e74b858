"""Limits on the shape of any JSON a client sends, whatever its API.

A body nested deeper than ``MAX_DEPTH`` is refused before anything is reserved or forwarded: no API the
gateway speaks needs more, and re-serialising such a body for an upstream fails (orjson stops at 255).
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


def nesting_over(value: dict[str, Any], limit: int) -> str | None:
    """The top-level field of ``value`` in which objects and arrays nest more than ``limit`` levels (``value``
    itself is level 1), or None. Iterative, so no depth can exhaust the stack, and it visits containers only:
    strings and numbers cost one type check each."""
    for key, child in value.items():
        kind = type(child)
        if kind is not dict and kind is not list:
            continue
        stack: list[tuple[Any, int]] = [(child, 2)]
        while stack:
            node, depth = stack.pop()
            if depth > limit:
                return key
            for item in node.values() if type(node) is dict else node:
                kind = type(item)
                if kind is dict or kind is list:
                    stack.append((item, depth + 1))
    return None
