"""tmws's import graph at import time, and its cycles.

``.venv/bin/python -m tests.import_graph`` prints every cycle (exit 1) or says there is none
(exit 0); ``make lint`` runs it and ``tests/test_import_graph.py`` asserts it.

An edge A → B means importing A runs B's module code: a module-level ``import``/``from``
(also inside top-level ``if``/``try``/``with`` and class bodies), not one under
``if TYPE_CHECKING:`` nor one inside a function (a deliberate late import). Importing
``tmws.x.y`` also runs the package ``tmws.x`` unless the importer is inside it already; the
root package ``tmws`` is left out of that, as every module runs under it, but an explicit
``from tmws import ...`` counts. The Rust extension is checked apart (:func:`native_imports`):
loaded on its own, it must import nothing from ``tmws``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cycles", "import_graph", "main", "native_imports"]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tmws"


def _modules(root: Path, package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "_migrations" in parts:  # alembic's scripts, run by alembic, not imported
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _runtime_imports(node.body)
            yield from _runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                yield from _runtime_imports(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _runtime_imports(node.body)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             known: dict[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    yield source
    for alias in node.names:
        if f"{source}.{alias.name}" in known:
            yield f"{source}.{alias.name}"


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules importing it runs (see the module docstring)."""
    known = _modules(root, package)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        for node in _runtime_imports(tree.body):
            for target in _targets(name, is_package, node, known):
                if target not in known or target == name:
                    continue
                graph[name].add(target)
                parts = target.split(".")
                for depth in range(2, len(parts)):  # packages the import runs first
                    parent = ".".join(parts[:depth])
                    if not (name == parent or name.startswith(parent + ".")):
                        graph[name].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


_NATIVE_PROBE = """
import importlib.util, sys
package = importlib.util.find_spec("tmws")  # finds the package without running it
[location] = package.submodule_search_locations
from pathlib import Path
[path] = Path(location).glob("_tmws_core*.so")
spec = importlib.util.spec_from_file_location("_tmws_core", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("\\n".join(sorted(name for name in sys.modules if name.split(".")[0] == "tmws")))
"""


def native_imports() -> list[str]:
    """The tmws modules the Rust extension imports when it is loaded on its own."""
    done = subprocess.run([sys.executable, "-c", _NATIVE_PROBE], capture_output=True,
                          text=True, timeout=60, check=True, cwd="/")
    return done.stdout.split()


def main() -> int:
    found = cycles(import_graph())
    native = native_imports()
    for component in found:
        print("import cycle:", " ⇄ ".join(component))
    if native:
        print("the Rust extension imports", ", ".join(native), "when it loads")
    if found or native:
        return 1
    print(f"no import cycle among {len(import_graph())} tmws modules; "
          "the Rust extension imports nothing from tmws")
    return 0


if __name__ == "__main__":
    sys.exit(main())
