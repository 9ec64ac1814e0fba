"""The package's layers, read from its source: the engine (`core/`) never imports Airflow, and no module
imports, at load time, a module that imports it back.

Dask workers on a remote cluster load `airflow_parallel_run.core` without Airflow installed; a cycle
makes the result of an import depend on which module came first. Imports inside functions (kept lazy
on purpose: pandas in the entry-script process, plotly for the report) and under `TYPE_CHECKING` do not
count as load-time edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "airflow_parallel_run"
NAME = "airflow_parallel_run"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    yield target
    yield from (f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`


def imports(module: str, *, load_time: bool) -> set[str]:
    """What `module` imports: everywhere, or only what runs when it is loaded."""
    path = MODULES[module]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if load_time and (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _is_type_checking(node)
            ):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_imported(module, path, node))
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    visit([child for child in children if isinstance(child, ast.stmt)])
            if isinstance(node, ast.Try):
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {i for i in imports(m, load_time=True) if i in MODULES and i != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_the_engine_never_imports_airflow() -> None:
    offenders = {
        module: sorted(
            i for i in imports(module, load_time=False) if i == "airflow" or i.startswith("airflow.")
        )
        for module in MODULES
        if module.startswith(f"{NAME}.core")
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_sensor_never_imports_the_operator() -> None:
    """The sensor shares the engine's reading of inputs (core.inputs), not the operator's module."""
    imported = imports(f"{NAME}.sensors", load_time=False)
    assert not any(i == f"{NAME}.operators" or i.startswith(f"{NAME}.operators.") for i in imported)


def test_nothing_imports_the_operator() -> None:
    """The operator is the top of the Airflow layer: its parts (templating, assets, task_run, deferral,
    airflow_config), partitions, the UI, the sensor and the triggers never import it (the UI reads the
    XCom keys from links); the package face names it lazily."""
    importers = sorted(
        module
        for module in MODULES
        if module != f"{NAME}.operators"
        and any(i == f"{NAME}.operators" for i in imports(module, load_time=False))
    )
    assert importers == []


def test_the_rules_see_imports() -> None:
    """The rules above would pass on a parser that finds nothing: check that it finds what is there."""
    graph = _graph()
    assert f"{NAME}.core.errors" in graph[f"{NAME}.core.config"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert any(i.startswith("airflow") for i in imports(f"{NAME}.operators", load_time=False))
