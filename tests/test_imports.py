"""The package's import rules, read from the source with ``ast`` (every import, at any depth,
function-level ones included): no import circle among sgdtrace's modules; the views import neither
torch nor the engines nor the teaching computations (they render what the report stage computed);
``--help`` imports neither torch nor NumPy (the command line's module-level imports, followed)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sgdtrace"


def _module_names() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("sgdtrace", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_names()


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never run."""
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, (ast.Name, ast.Attribute)) and getattr(test, "id", getattr(test, "attr", "")) == (
        "TYPE_CHECKING"
    )


def _imports(name: str, *, top_level: bool = False) -> set[str]:
    """The modules ``name`` imports (absolute names, a ``from X import y`` counted as ``X.y`` where
    ``y`` is a module of the package). ``top_level``: only what importing the module runs (not
    inside functions, nor under ``if TYPE_CHECKING``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _own(module: str) -> str | None:
    """The package module an imported name belongs to (``sgdtrace.views.fmt`` for itself), or None."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def _graph() -> dict[str, set[str]]:
    return {m: {o for i in _imports(m) if i.startswith("sgdtrace") and (o := _own(i)) and o != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_reader_sees_the_imports_it_must():
    """The rules below are only as good as the reader: it finds function-level, relative and
    ``from package import module`` imports, and leaves out ``if TYPE_CHECKING`` ones."""
    graph = _graph()
    assert "sgdtrace.tracing" in graph["sgdtrace"]  # inside trace(): function level
    assert "sgdtrace.engines.optimizers._fused" in graph["sgdtrace.engines.optimizers.sgd"]  # from pkg import mod
    assert "sgdtrace.views.fmt" in graph["sgdtrace.views.table"]
    assert "numpy" not in _imports("sgdtrace.verdict", top_level=True)  # only under TYPE_CHECKING
    assert "numpy" in _imports("sgdtrace.verdict")  # inside FieldSummary.of
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("sgdtrace.views")))
def test_views_import_neither_torch_nor_engines_nor_teaching(name):
    """A view renders what it is handed: the numbers come from the trace and the report stage
    (:mod:`sgdtrace.report`), not from running an engine, torch or a teaching computation."""
    banned = ("torch", "sgdtrace.engines", "sgdtrace.teaching")
    bad = sorted(i for i in _imports(name) if any(i == b or i.startswith(b + ".") for b in banned))
    assert bad == [], f"{name} imports {bad}"


def _runtime_closure(start: str) -> set[str]:
    """Every module importing ``start`` runs: its module-level imports, followed through the package
    (each package's ``__init__`` included, as Python runs it first)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if not name.startswith("sgdtrace"):
            continue
        own = _own(name)
        parents = [".".join(own.split(".")[:i]) for i in range(1, own.count(".") + 1)]
        todo.extend(parents + [own] if own != name else parents)
        if own == name:
            todo.extend(_imports(name, top_level=True))
    return seen


def test_help_imports_neither_torch_nor_numpy():
    """``sgdtrace --help`` and ``--version`` import the command line module and what it imports at
    module level: no torch, no NumPy anywhere in that closure (commands import them when they run)."""
    closure = _runtime_closure("sgdtrace.cli")
    assert "sgdtrace.config" in closure and "sgdtrace.models" in closure  # the reader follows the package
    heavy = sorted(m for m in closure if m.split(".")[0] in ("torch", "numpy"))
    assert heavy == []
