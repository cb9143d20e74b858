"""Fail if any two sluicegate modules import each other, directly or through others (TYPE_CHECKING included).

import-linter's layers contract (pyproject.toml) keeps packages in order; this keeps modules inside a
package free of cycles too. grimp (import-linter's graph builder) does the parsing.
"""

from __future__ import annotations

import sys

import grimp


def cycles(package: str) -> list[list[str]]:
    graph = grimp.build_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    bad = cycles("sluicegate")
    for component in bad:
        print("import cycle:", " <-> ".join(component))
    print(f"import cycles: {len(bad)}")
    sys.exit(1 if bad else 0)
