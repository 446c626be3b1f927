"""The package's layers point one way: core <- stages <- plots and reports <- run.

Every import counts, also one made inside a function: an import that only runs late still ties
the two packages together.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stsnb"
#: The stages (and the data sources they read); each may use core and the stages before it.
STAGES = {"curation", "registration", "slices", "training", "radiomics", "results", "gradcam",
          "reporting", "dicom", "synth"}
#: What each layer may never import.
FORBIDDEN = {
    "core": STAGES | {"plots", "appendix", "run"},
    **{stage: {"plots", "appendix", "run"} for stage in STAGES},
    "plots": {"appendix", "run"},
    "appendix": {"run"},
}


def unit(module: str) -> str:
    """The top-level part of the package a module belongs to ('core', 'training', ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports() -> dict[str, set[tuple[str, str]]]:
    """{unit: {(imported unit, 'file:line')}} over every import in the package."""
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import"
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("stsnb.") and unit(target) != unit(module):
                    graph[unit(module)].add((unit(target), f"{path.name}:{node.lineno}"))
    return graph


def cycle(graph: dict[str, set[tuple[str, str]]]) -> list[str] | None:
    """One cycle between units (as a path), or None."""
    edges = {u: {t for t, _ in targets} for u, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_between_packages():
    found = cycle(imports())
    assert not found, "import cycle: " + " -> ".join(found or [])


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {("b", "x:1")}, "b": {("c", "y:1")}, "c": {("a", "z:1")}}
    assert cycle(graph) == ["a", "b", "c", "a"]
    assert cycle({"a": {("b", "x:1")}}) is None


def test_layers_point_one_way():
    wrong = sorted(f"{source} imports {target} ({where})"
                   for source, targets in imports().items()
                   for target, where in targets if target in FORBIDDEN.get(source, ()))
    assert not wrong, "\n".join(wrong)


def test_no_development_tool_in_the_package():
    assert not (PACKAGE / "nbcheck.py").exists() and not (PACKAGE / "bookcheck.py").exists()


def test_the_examples_in_docstrings_run():
    import doctest
    import importlib

    with_examples = sorted(p for p in PACKAGE.rglob("*.py") if ">>>" in p.read_text())
    assert with_examples, "no docstring example found"
    for path in with_examples:
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = importlib.import_module(".".join(parts))
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, f"{path.name}: {result.failed} failing example(s)"
        assert result.attempted > 0, path.name
