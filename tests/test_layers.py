"""The package's import graph has no circle and points down the layers of docs/ARCHITECTURE.md,
counting every import of a vaecli module, the lazy ones inside functions too (a lazy import hides
a circle from Python, not from the design)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vaecli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the vaecli modules it imports (a `from pkg import name` counts as pkg.name when
    that is a module, else as pkg)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in modules else base)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of the graph, one path each (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_import_graph_has_no_circle():
    graph = imports()
    assert "vaecli.training.tracking" in graph["vaecli.training.trainer"]  # the parser sees lazy imports
    assert cycles(graph) == []


# docs/ARCHITECTURE.md, "Layers": a module may import its own layer and those below it.
LAYERS = [
    ("core", ("vaecli.errors", "vaecli.atomic", "vaecli.bounds", "vaecli.registry", "vaecli.hooks")),
    ("schema, models, data", ("vaecli.config", "vaecli.models", "vaecli.data", "vaecli.objectives",
                              "vaecli.objectives_config", "vaecli.perceptual")),
    ("runtime", ("vaecli.runtime",)),
    ("evaluation", ("vaecli.evaluation",)),
    ("training", ("vaecli.training",)),
    ("experiments", ("vaecli.experiments",)),
    ("cli", ("vaecli.cli", "vaecli.__main__")),
    ("docs", ("vaecli.reference",)),
]


def layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md")


def test_every_import_points_down_the_layers():
    graph = imports()
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
              for m, deps in graph.items() if m != "vaecli"  # the package itself is the API: vaecli.load
              for d in deps if layer(d) > layer(m)]
    assert upward == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
