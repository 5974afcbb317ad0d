"""The layout shows the design (ARCHITECTURE.md): imports point down only and never in a
circle, modules and functions stay small, and the shared helpers have one definition.

Exceptions that exist today are listed by name with their current size, so they cannot grow
and a new one fails; each entry is debt to pay, not a licence."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcompress"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# Lower layers never import higher ones: cli -> orchestration -> passes -> foundation.
LAYERS = {
    "foundation": 0,  # model_io, graph-level helpers, runtime, inputs, errors, encoding...
    "passes": 1,  # mcompress.passes.*, mcompress.recover.*
    "orchestration": 2,  # config, pipeline, validate, report, render, batch, doctor...
    "cli": 3,
}
ORCHESTRATION = {
    "config",
    "pipeline",
    "validate",
    "report",
    "render",
    "render_batch",
    "batch",
    "batch_merge",
    "batch_plan",
    "batch_ray",
    "shard",
    "doctor",
    "sensitivity",
    "budget",
    "pass_cache",
    "tune",
    "layer_search",
    "render_search",
    "render_terminal",
    "render_charts",
}

# Known debt (issue 16), each with the reason it is still here.
KNOWN_LARGE_MODULES: dict[str, int] = {}  # split these; caps are their size plus 30 lines
KNOWN_LONG_FUNCTIONS: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """mcompress modules `path` imports at run time (module level or inside functions;
    `if TYPE_CHECKING:` blocks are for the type checker only and do not count)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules and name != "mcompress"}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("cli", "__main__"):
        return LAYERS["cli"]
    if len(parts) > 1 and parts[1] in ("passes", "recover"):
        return LAYERS["passes"]
    if len(parts) > 1 and parts[1] in ORCHESTRATION:
        return LAYERS["orchestration"]
    return LAYERS["foundation"]


def _pass_package(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "passes" and parts[2] not in ("base", "__init__"):
        return parts[2]
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_import_runs_back_up(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        f"{src} -> {dst}"
        for src, targets in graph.items()
        for dst in targets
        if _layer(dst) > _layer(src)
    )
    assert upward == []


def test_a_pass_never_imports_another_pass(graph: dict[str, set[str]]) -> None:
    crossing = sorted(
        (src, dst)
        for src, targets in graph.items()
        for dst in targets
        if _pass_package(src) and _pass_package(dst) and _pass_package(src) != _pass_package(dst)
    )
    assert crossing == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    """Strongly connected components of the run-time import graph (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    # A package's __init__ importing its own submodules is how a package is assembled; the
    # registry (mcompress.passes) importing each pass is the same.
    found = [c for c in circles if not _assembly_only(c, graph)]
    assert found == []


def _assembly_only(component: list[str], graph: dict[str, set[str]]) -> bool:
    """True when every edge inside the circle goes from a package to its own submodule."""
    members = set(component)
    edges = [(src, dst) for src in component for dst in graph[src] if dst in members]
    return all(dst.startswith(src + ".") for src, dst in edges)


def test_modules_and_functions_stay_small() -> None:
    large, long = {}, {}
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > KNOWN_LARGE_MODULES.get(name, MAX_MODULE_LINES):
            large[name] = lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{name}.{node.name}"
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > KNOWN_LONG_FUNCTIONS.get(key, MAX_FUNCTION_LINES):
                    long[key] = size
    assert (large, long) == ({}, {})


def test_shared_helpers_have_one_definition() -> None:
    """One onnxruntime session builder and error-line helper (runtime.py), one list of batch
    dimension names (inputs.py), one naming scheme for what passes add (graph.FreshNames)."""
    defined: dict[str, list[str]] = {}
    sessions = []
    namers = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Names"):
                namers.append(f"{name}.{node.name}")
            if isinstance(node, (ast.FunctionDef, ast.Assign)):
                names = (
                    [node.name]
                    if isinstance(node, ast.FunctionDef)
                    else [t.id for t in node.targets if isinstance(t, ast.Name)]
                )
                for defined_name in names:
                    defined.setdefault(defined_name.lstrip("_"), []).append(name)
            if isinstance(node, ast.Attribute) and node.attr == "InferenceSession":
                sessions.append(name)
    assert defined["error_line"] == ["mcompress.runtime"]
    assert namers == ["mcompress.graph.FreshNames"]
    assert len(defined["BATCH_NAMES"]) == 1
    assert defined["BATCH_NAMES"][0].startswith("mcompress.inputs")
    for drifted in ("first_line", "one_line", "last_line"):
        assert drifted not in defined, defined.get(drifted)
    assert set(sessions) == {"mcompress.runtime"}


def test_code_comments_pin_no_versions_or_timings() -> None:
    """Measured figures and the versions they hold for live in benchmarks/README.md, where they
    can be re-measured; a comment that pins them goes stale silently."""
    pinned = re.compile(r"onnxruntime \d+\.\d+|\d+-core|\d(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower)")
    found = [
        f"{name}:{number}"
        for name, path in _modules().items()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pinned.search(line)
    ]
    assert found == []
