#!/usr/bin/env python
"""Show pdeseg's import graph between its layers (the packages and top-level modules of
``src/pdeseg``), as ``tests/test_spine.py::test_import_layering`` checks it.

Every ``import pdeseg...`` / ``from pdeseg... import`` of every module counts, at the top of a
file or inside a function (a lazy import is still a dependency). Prints one line per layer with
the layers it imports and how many import statements point there; ``--dot FILE`` also writes the
graph for Graphviz (``dot -Tsvg FILE -o graph.svg``).

Usage (from the repository root)::

    python scripts/import_graph.py
    python scripts/import_graph.py --dot imports.dot
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pdeseg"


def pdeseg_imports(path: Path) -> set[str]:
    """Every ``pdeseg...`` module a file imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pdeseg"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pdeseg")}
    return found


def layer_of(module: str) -> str:
    """``pdeseg.inference.decode`` -> ``inference``; ``pdeseg.cli`` -> ``cli``; ``pdeseg`` -> ``pdeseg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph(src: Path = SRC) -> dict[str, collections.Counter]:
    """Layer -> Counter of the other layers its modules import (import statements per layer)."""
    edges: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        edges[source]  # every layer gets a line, also one that imports nothing
        for module in pdeseg_imports(path):
            target = layer_of(module)
            if target != source:
                edges[source][target] += 1
    return edges


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dot", type=Path, help="also write the graph in Graphviz's DOT language")
    args = p.parse_args(argv)
    edges = graph()
    width = max(map(len, edges))
    for source in sorted(edges):
        targets = ", ".join(f"{t} ({n})" for t, n in sorted(edges[source].items()))
        print(f"{source:<{width}}  -> {targets or '(nothing from pdeseg)'}")
    if args.dot:
        lines = ["digraph pdeseg {", "  rankdir=BT;"]
        lines += [f'  "{s}" -> "{t}" [label={n}];' for s in sorted(edges) for t, n in sorted(edges[s].items())]
        args.dot.write_text("\n".join([*lines, "}", ""]))
        print(f"wrote {args.dot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
