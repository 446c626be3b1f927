"""Notebook hygiene: committed without outputs, with a `parameters` cell holding the contract.

`python tests/tools/nbcheck.py notebooks` checks; `--strip` removes outputs and execution counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

#: Parameters every chapter accepts (DESIGN.md §4).
REQUIRED_PARAMETERS = ("cohort_dir", "work_dir", "profile", "seed")


def notebook_problems(path: str | Path) -> list[str]:
    """Every hygiene problem of one notebook (empty when clean)."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    problems = []
    parameter_cells = [
        c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if len(parameter_cells) != 1:
        problems.append(f"{path.name}: expected one cell tagged 'parameters', "
                        f"found {len(parameter_cells)}")
    else:
        source = parameter_cells[0].source
        for name in REQUIRED_PARAMETERS:
            if f"{name} =" not in source and f"{name}:" not in source:
                problems.append(f"{path.name}: parameters cell lacks '{name}'")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{path.name}: cell {index} has outputs (commit without outputs)")
        if cell.get("execution_count") is not None:
            problems.append(f"{path.name}: cell {index} has an execution count")
    return problems


def strip_outputs(path: str | Path) -> None:
    """Remove outputs and execution counts in place."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    """Check (or strip) every notebook in the given folders."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--strip", action="store_true")
    args = parser.parse_args(argv)
    paths = sorted(p for folder in args.folders for p in Path(folder).glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    problems = []
    for path in paths:
        if args.strip:
            strip_outputs(path)
        problems += notebook_problems(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(paths)} notebooks checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
