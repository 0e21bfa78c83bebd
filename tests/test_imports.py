"""Imports flow one way: backends <- nn <- models <- generate / train <- command line, with no cycles.

Reads the source of every module in `scratch/` and `backends/` (imports inside functions included: a cycle hidden
by a function-level import is still a cycle) and checks two things:
- every import follows the layering table below (the tokenizer is host-side and imports no backend; nothing
  imports a command-line module except another command-line module);
- the module graph has no cycle.
A new top-level area must be added to LAYERS on purpose; the test refuses modules it cannot place.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backends", "scratch")

# area -> the areas it may import (itself always allowed). An area is a top-level package of scratch/ (or a
# host-side top-level module such as scratch.atomic), or "backends". Command-line modules are their own area.
LAYERS: dict[str, set[str]] = {
    "backends": set(),
    "scratch": set(),                      # scratch/__init__.py: the version and the component table, no imports
    "scratch.atomic": set(),               # host-side file writing, used by every area that saves
    "scratch.safe_read": set(),            # host-side reading of untrusted files (caps, regular files only)
    "scratch.formats": {"scratch.atomic"},  # host-side readers/writers of file formats (GGUF), numpy only
    "scratch.tokenizer": {"scratch.atomic", "scratch.safe_read", "scratch.formats"},
    "scratch.nn": {"backends"},
    "scratch.models": {"backends", "scratch.nn", "scratch.atomic", "scratch.safe_read", "scratch.formats"},
    "scratch.generate": {"backends", "scratch.nn", "scratch.models", "scratch.tokenizer"},
    "scratch.train": {"backends", "scratch.nn", "scratch.models", "scratch.atomic", "scratch.safe_read",
                      "scratch.tokenizer"},
    "scratch.chat": {"backends", "scratch.nn", "scratch.models", "scratch.tokenizer", "scratch.generate"},
    # The shipped model and the tour of it sit on top of what they show, and nothing below imports them: bundled
    # only loads its files (a model folder and a tokenizer); demo runs tokenizer, size arithmetic and decoding on it.
    "scratch.bundled": {"backends", "scratch.models", "scratch.tokenizer"},
    "scratch.demo": {"backends", "scratch.models", "scratch.tokenizer", "scratch.generate", "scratch.bundled"},
    "cli": {"*"},                          # the command line may import everything
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def is_cli(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("cli", "__main__")


def area_of(name: str) -> str:
    if is_cli(name):
        return "cli"
    if name == "backends" or name.startswith("backends."):
        return "backends"
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its source (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(candidate: str) -> None:
        parts = candidate.split(".")
        while parts:
            dotted = ".".join(parts)
            if dotted in modules:
                found.add(dotted)
                return
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                    # relative import: anchor at this package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                anchor = ".".join(base + ([node.module] if node.module else []))
            else:
                anchor = node.module or ""
            for alias in node.names:                          # `from pkg import sub` imports the submodule
                if f"{anchor}.{alias.name}" in modules:
                    resolve(f"{anchor}.{alias.name}")
                else:
                    resolve(anchor)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in all_modules() if area_of(name) not in LAYERS)
    assert not unplaced, f"modules in no layer (add their area to LAYERS in {__file__}): {unplaced}"


def test_imports_follow_the_layering():
    wrong = []
    for name, targets in import_graph().items():
        area = area_of(name)
        allowed = LAYERS.get(area, set())
        for target in sorted(targets):
            target_area = area_of(target)
            if target_area == area or "*" in allowed:
                continue
            if target_area == "cli":
                wrong.append(f"{name} -> {target} (only the command line imports a cli module)")
            elif target_area not in allowed:
                wrong.append(f"{name} -> {target} ({area} may import only {sorted(allowed) or 'nothing'})")
    assert not wrong, "imports against the layering:\n  " + "\n  ".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search, white/grey/black)."""
    colour = {node: 0 for node in graph}
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child, 2) == 1:
                return path[path.index(child):] + [child]
            elif colour.get(child) == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a2"}, "a2": set(), "b": {"b"}}, True),
])
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic


def test_function_level_imports_are_read(tmp_path):
    # A cycle hidden by an import inside a function is still found.
    package = tmp_path / "scratch" / "demo"
    package.mkdir(parents=True)
    (package / "a.py").write_text("def f():\n    from scratch.demo import b\n")
    modules = {"scratch.demo.a": package / "a.py", "scratch.demo.b": package / "a.py"}
    assert imports_of("scratch.demo.a", package / "a.py", modules) == {"scratch.demo.b"}
