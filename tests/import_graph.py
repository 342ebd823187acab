"""The import graph of the project's packages, read from the source with ``ast``.

An edge ``a -> b`` for each ``import b`` / ``from b import x`` in module ``a`` (``b.x`` when
``x`` is a submodule), at module level or inside a function; imports under
``if TYPE_CHECKING:`` are left out (they never run). With ``with_packages`` an import of
``a.b.c`` also reaches the packages ``a`` and ``a.b`` whose ``__init__`` it runs.

``python tests/import_graph.py [--with-packages]`` prints the circles (strongly connected
components of more than one module) and the number of imports inside functions.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cssl_core", "api", "cli", "worker", "store", "dispatch")


@dataclass
class Import:
    source: str
    target: str
    line: int
    in_function: bool


@dataclass
class ImportGraph:
    modules: set[str]
    imports: list[Import] = field(default_factory=list)

    def reached(self, imp: Import, with_packages: bool = False) -> set[str]:
        """The modules an import runs: its target, and with ``with_packages`` the packages above
        it that are not already running (those above the importer)."""
        out = {imp.target}
        parts = imp.target.split(".")
        for depth in range(1, len(parts) if with_packages else 1):
            package = ".".join(parts[:depth])
            if not (imp.source == package or imp.source.startswith(package + ".")):
                out.add(package)
        return out

    def edges(self, with_packages: bool = False) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            out[imp.source] |= self.reached(imp, with_packages)
        return out

    def circles(self, with_packages: bool = False) -> list[list[str]]:
        """Strongly connected components that form a circle, largest first (Tarjan's algorithm)."""
        edges = self.edges(with_packages)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = 0

        def visit(start: str) -> None:
            nonlocal counter
            work = [(start, iter(sorted(edges[start])))]
            index[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = counter
                        counter += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(edges[child]))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges[node]:
                        found.append(sorted(component))

        for module in sorted(edges):
            if module not in index:
                visit(module)
        return sorted(found, key=lambda c: (-len(c), c))

    def function_level(self) -> list[Import]:
        return [imp for imp in self.imports if imp.in_function]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.AST, in_function: bool = False):
    """``(statement, in_function)`` for each import statement, skipping ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for node in child.orelse:
                yield from _imports_in(node, in_function)
            continue
        yield from _imports_in(child, in_function)


def _imports_in(node: ast.AST, in_function: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, in_function
    yield from _imports(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def build_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = ImportGraph(modules=set(files))

    def project(name: str) -> str | None:
        # The innermost project module a dotted name lies in (an attribute path ends at its module).
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in dict.fromkeys(filter(None, map(project, targets))):  # one edge per statement and module
                graph.imports.append(Import(module, target, node.lineno, in_function))
    return graph


def report(graph: ImportGraph, with_packages: bool = False) -> str:
    """The counts, and each circle with the imports that close it."""
    lines = []
    circles = graph.circles(with_packages)
    module_level = [imp for imp in graph.imports if not imp.in_function]
    lines.append(
        f"{len(graph.modules)} modules; imports of a project module: {len(module_level)} at module level, "
        f"{len(graph.function_level())} inside functions"
    )
    lines.append(f"{len(circles)} circle(s), sizes {[len(c) for c in circles]}")
    for circle in circles:
        members = set(circle)
        lines.append(f"circle of {len(circle)}:")
        for imp in graph.imports:
            inside = sorted(graph.reached(imp, with_packages) & members)
            if imp.source in members and inside:
                where = "in a function" if imp.in_function else "module level"
                lines.append(f"  {imp.source}:{imp.line} -> {', '.join(inside)} ({where})")
    lines.append(
        "function-level imports by package: "
        + ", ".join(
            f"{pkg} {sum(imp.source.split('.')[0] == pkg for imp in graph.function_level())}" for pkg in PACKAGES
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--with-packages"]
    root = Path(args[0]).resolve() if args else ROOT
    print(report(build_graph(root), with_packages="--with-packages" in sys.argv))
