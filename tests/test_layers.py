"""The package's layers only point down (docs/development.md draws them).

The imports of every module under src/isd are read from its source: a folder (or a module at the top of the
package) may import only its own layer and the layers below; no two folders import each other, however
indirectly; nothing outside `isd.cli` imports it; and no function imports anything but an optional dependency,
so every dependency of a module is in its first lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src"

# top to bottom: a unit (a folder, or a module at the top of the package) imports its own layer and those below
LAYERS = [
    {"isd.cli", "isd.__main__"},  # every parser and entry point
    {"isd.experiments"},  # grids of runs and their reports
    {"isd.train", "isd.eval"},  # the training loop; evaluation
    {"isd.data", "isd.methods", "isd.losses", "isd.checkpoint", "isd.plots", "isd"},  # images; methods; checkpoint files
    {"isd.config", "isd.nets"},  # a run's settings; networks
    {"isd.runtime", "isd.errors"},  # device, processes, signals, file writes; the errors users see
]
OPTIONAL = {"faiss", "torch.utils.tensorboard"}  # imported where used: a missing one fails only that use


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The folder a module is in, or the module itself at the top of the package (isd.config)."""
    return ".".join(module.split(".")[:2])


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """What an import statement names: `import a.b` -> [a.b]; `from a import b, c` -> [a, a.b, a.c] (b and c
    may be modules or names in a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def scan(src: Path) -> tuple[list[tuple[str, list[str], int]], list[tuple[str, list[str], int]]]:
    """(module-level imports, imports inside functions), each as (importer, names, line)."""
    top, inner = [], []
    for path in sorted(src.rglob("*.py")):
        module = module_name(path, src)
        tree = ast.parse(path.read_text(), str(path))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            names = imported(node, module, path.name == "__init__.py")
            if names:
                (inner if id(node) in in_function else top).append((module, names, node.lineno))
    return top, inner


def isd_edges(src: Path) -> list[tuple[str, str, str]]:
    """(importer's unit, imported unit, 'module:line') for each import of isd by isd at module level."""
    known = {module_name(p, src) for p in src.rglob("*.py")}
    edges = set()
    for module, names, line in scan(src)[0]:
        for name in names:
            target = name if name in known else name.rsplit(".", 1)[0]
            if target in known:
                edges.add((unit(module), unit(target), f"{module}:{line}"))
    return sorted(edges)


def layer_of(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def upward(edges: list[tuple[str, str, str]]) -> list[str]:
    return [f"{where} ({a} imports {b})" for a, b, where in edges if layer_of(b) < layer_of(a)]


def cycles(edges: list[tuple[str, str, str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def cli_from_below(edges: list[tuple[str, str, str]]) -> list[str]:
    return [where for a, b, where in edges if b == "isd.cli" and a not in LAYERS[0]]


def function_imports(src: Path) -> list[str]:
    return [f"{module}:{line} imports {names[0]}" for module, names, line in scan(src)[1]
            if not any(names[0] == opt or names[0].startswith(opt + ".") for opt in OPTIONAL)]


# ----------------------------------------------------------------------------------------------- the package


def test_every_unit_of_the_package_has_a_layer():
    units = {unit(module_name(p, SRC)) for p in (SRC / "isd").rglob("*.py")}
    assert units == set().union(*LAYERS), "a new folder or top-level module: give it a layer in LAYERS (and docs)"


def test_imports_only_point_down():
    assert not upward(isd_edges(SRC)), upward(isd_edges(SRC))


def test_no_cycle_between_folders():
    assert not cycles(isd_edges(SRC))


def test_nothing_below_the_command_line_imports_it():
    assert not cli_from_below(isd_edges(SRC))


def test_no_import_inside_a_function_but_optional_dependencies():
    assert not function_imports(SRC)


# ----------------------------------------------------------------------------------------------- the checks


@pytest.fixture()
def leaky(tmp_path: Path) -> Path:
    """A package with each fault: train <-> data, data -> cli, an isd import inside a function."""
    files = {
        "isd/__init__.py": "",
        "isd/errors.py": "",
        "isd/cli/__init__.py": "",
        "isd/cli/common.py": "import isd.errors\n",
        "isd/train/__init__.py": "",
        "isd/train/loop.py": "from isd.data import loaders\n",
        "isd/data/__init__.py": "",
        "isd/data/loaders.py": "from isd.train.loop import x\nfrom isd.cli.common import y\n\n\n"
                               "def f():\n    from isd.errors import UsageError\n    import faiss\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checks_find_what_they_look_for(leaky):
    edges = isd_edges(leaky)
    assert ["isd.data", "isd.train", "isd.data"] in cycles(edges) or ["isd.train", "isd.data", "isd.train"] in \
        cycles(edges)
    assert cli_from_below(edges) == ["isd.data.loaders:2"]
    assert sorted(upward(edges)) == ["isd.data.loaders:1 (isd.data imports isd.train)",
                                     "isd.data.loaders:2 (isd.data imports isd.cli)"]
    assert function_imports(leaky) == ["isd.data.loaders:6 imports isd.errors"]
