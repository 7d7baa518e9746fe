"""alignlab's shape: the import graph has no cycle, no recipe imports another recipe, no lower layer imports a higher
one, and no file is longer than 600 lines. Every import counts, at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "alignlab"

# lowest first; a module may import its own layer or a lower one (the README's Layers section says why)
LAYERS = [
    {"errors", "config", "objectives"},
    {"model"},
    {"lora", "quant", "merge"},
    {"text"},
    {"data"},
    {"tasks"},
    {"rewards"},
    {"infer"},
    {"tools"},
    {"envs"},
    {"train"},
    {"eval"},
    {"rl", "synth"},
    {"recipes"},
    {"pipeline", "demo", "memory", "serve", "harden", "ace", "lab"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alignlab"


def imports(module: str) -> set[str]:
    """The alignlab modules `module` imports (`from pkg import sub` counts as pkg.sub when sub is a module)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages up from this one
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == "alignlab" and n in MODULES and n != module}
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_every_layer_is_known():
    unknown = {layer(m) for m in MODULES} - set(LEVEL) - {"alignlab"}
    assert not unknown, f"put these packages in LAYERS: {sorted(unknown)}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_recipe_imports_another_recipe():
    bad = [(m, n) for m, targets in GRAPH.items() if layer(m) == "recipes" and m != "alignlab.recipes"
           for n in targets if layer(n) == "recipes"]
    assert not bad, "recipes compose components, never other recipes: " + ", ".join(f"{m} -> {n}" for m, n in bad)


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} ({layer(m)}) -> {n} ({layer(n)})" for m, targets in GRAPH.items() for n in targets
           if layer(m) in LEVEL and layer(n) in LEVEL and LEVEL[layer(n)] > LEVEL[layer(m)]]
    assert not bad, "a layer imports only its own or lower ones:\n" + "\n".join(bad)


def test_objectives_depend_on_torch_alone():
    for m, path in MODULES.items():
        if layer(m) != "objectives":
            continue
        roots = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots.add((node.module or "").split(".")[0])
        assert roots <= {"torch", "alignlab", "__future__", "math", "dataclasses", "typing", "collections"}, (m, roots)
        assert all(layer(n) == "objectives" for n in GRAPH[m]), (m, GRAPH[m])


def test_no_file_is_longer_than_600_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_the_checks_can_fail(tmp_path):
    """The cycle finder and the layer rule see what they should on a made-up graph."""
    assert layer("alignlab.recipes.grpo") == "recipes" and layer("alignlab.cli") == "cli"
    assert LEVEL["objectives"] < LEVEL["model"] < LEVEL["tasks"] < LEVEL["rewards"] < LEVEL["recipes"] < LEVEL["cli"]
    assert "alignlab.tasks.base" in GRAPH["alignlab.tasks.tinyworld"]  # an import inside the package is seen
