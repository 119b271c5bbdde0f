"""The shape of the package (ARCHITECTURE.md), checked on its source with `ast`:

- imports point down the declared layer order, and no two modules import each other, directly or through
  others; imports inside functions count like any other;
- every module belongs to a layer, so a new one must be placed;
- no function is longer than 80 lines;
- no `transferkit_*` attribute rides on an object (state lives in configs and run directories).

The checker itself is tested on small fake packages, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transferkit"

# Lowest first. A module may import modules of its own layer or of layers before it. The names are module
# prefixes: "transferkit.data" is the data package and everything in it; "transferkit" alone is the
# package's own __init__ (the public API, on top).
LAYERS: list[tuple[str, list[str]]] = [
    ("errors", ["transferkit.errors"]),
    ("options", ["transferkit.options", "transferkit.files"]),
    ("runtime", ["transferkit.runtime", "transferkit.rundir"]),
    ("data", ["transferkit.data"]),
    ("models", ["transferkit.models"]),
    ("objectives", ["transferkit.objectives"]),
    ("methods", ["transferkit.methods"]),
    ("config", ["transferkit.config"]),
    ("evaluate", ["transferkit.evaluate"]),
    ("report", ["transferkit.report"]),
    ("diagnose", ["transferkit.diagnose"]),
    ("train", ["transferkit.train"]),
    ("cost", ["transferkit.cost"]),
    ("recommend", ["transferkit.recommend"]),
    ("runs", ["transferkit.runs"]),
    ("ship", ["transferkit.ship"]),
    ("serve", ["transferkit.serve"]),
    ("compare", ["transferkit.compare"]),
    ("api", ["transferkit.api"]),
    ("entry points", ["transferkit.cli", "transferkit.__main__", "transferkit"]),
]
MAX_FUNCTION_LINES = 80


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the package at `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """Package modules that module `name` imports, anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.add(target)          # `from . import loop`: the submodule
                elif base in modules:
                    found.add(base)            # `from .loop import fit`: the module holding the name
    return found - {name}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer with the longest prefix naming `module` (None: in no layer). The bare package name
    ("transferkit") names its __init__ only."""
    def names(prefix: str) -> bool:
        return module == prefix or ("." in prefix and module.startswith(prefix + "."))

    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(layers) for prefix in prefixes
               if names(prefix)]
    return max(matches)[1] if matches else None


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = layer_of(module, layers), layer_of(target, layers)
            if here is not None and there is not None and there > here:
                problems.append(f"{module} ({layers[here][0]}) imports {target} ({layers[there][0]}), a layer above it")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for name, path in module_files(root).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


def hidden_attributes(root: Path, prefix: str = "transferkit_") -> list[str]:
    """`x.transferkit_…` anywhere, and getattr / setattr / hasattr with such a name."""
    found = []
    for name, path in module_files(root).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr.startswith(prefix):
                found.append(f"{name}:{node.lineno}: .{node.attr}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith(prefix)):
                found.append(f"{name}:{node.lineno}: {node.func.id}(…, {node.args[1].value!r})")
    return found


# ---------------------------------------------------------------- the package

def test_imports_point_down_the_layers():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_cycles():
    assert cycles(import_graph(PACKAGE)) == []


def test_every_module_has_a_layer():
    assert [m for m in import_graph(PACKAGE) if layer_of(m) is None] == []


def test_no_function_over_80_lines():
    assert long_functions(PACKAGE) == []


def test_no_state_rides_on_model_objects():
    assert hidden_attributes(PACKAGE) == []


def test_the_graph_resolves_relative_imports():
    graph = import_graph(PACKAGE)
    assert "transferkit.api" in graph["transferkit.cli"]                          # from .api import …
    assert "transferkit.methods.registry" in graph["transferkit.methods.lora"]     # from .registry import …
    assert "transferkit.train.checkpoint" in graph["transferkit.train.loop"]      # from . import checkpoint
    assert "transferkit.objectives" in graph["transferkit.evaluate.metrics"]      # from ..objectives import …


# ---------------------------------------------------------------- the checker, on fake packages

def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "fake"
    for relative, text in files.items():
        path = pkg / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "a.py": "from .b import g\n",
                              "b.py": "def g():\n    from . import a\n    return a\n", "c.py": "from .a import g\n"})
    assert cycles(import_graph(pkg)) == [["fake.a", "fake.b"]]


def test_checker_finds_an_upward_import(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "", "low/__init__.py": "", "low/x.py": "from ..high import y\n",
                              "high.py": "y = 1\n"})
    layers = [("low", ["fake.low"]), ("high", ["fake.high"]), ("top", ["fake"])]
    assert upward_imports(import_graph(pkg), layers) == ["fake.low.x (low) imports fake.high (high), a layer above it"]
    assert layer_of("fake.low.x", layers) == 0 and layer_of("fake", layers) == 2


@pytest.mark.parametrize("source, found", [
    ("def f(m):\n    m.transferkit_task = 'x'\n", True),
    ("def f(m):\n    return getattr(m, 'transferkit_task', None)\n", True),
    ("def f(m):\n    m.task = 'x'\n", False),
])
def test_checker_finds_hidden_attributes(tmp_path, source, found):
    pkg = _package(tmp_path, {"__init__.py": "", "m.py": source})
    assert bool(hidden_attributes(pkg)) is found


def test_checker_measures_function_length(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    pkg = _package(tmp_path, {"__init__.py": "", "m.py": f"def long():\n{body}\n\ndef short():\n    pass\n"})
    assert long_functions(pkg) == ["fake.m.long: 81 lines"]
