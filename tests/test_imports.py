"""The house's imports, read from the source (ast), module-level and function-level alike.

No circle among mlmonitor's modules; nothing outside ``mlmonitor/tools/`` imports the offline tools;
an import inside a function is there for an optional dependency, or says why on its line (or the
line above): a measured start-up cost, a POSIX-only module. Imports under ``if TYPE_CHECKING:``
never run, so they are left out.
"""
from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mlmonitor"
TOOLS = "mlmonitor.tools"
#: never imported by request-time code: the offline subpackage, and argparse (the command line's)
OFFLINE = (TOOLS, "argparse")
#: imported inside a function because an app may not have them installed: the extras in setup.cfg
#: (the GPU library is pynvml, the otlp extra's exporter lives under opentelemetry.exporter.otlp),
#: and pytest, which only the mlmonitor_capture fixture in testing.py needs
OPTIONAL = ("mlflow", "numpy", "pandas", "django", "starlette", "fastapi", "pynvml", "uvicorn", "gunicorn",
            "asgiref", "sklearn", "opentelemetry.exporter.otlp", "pytest")


@dataclass(frozen=True)
class Import:
    source: str       # the importing module, e.g. "mlmonitor.config"
    target: str       # the imported module, e.g. "mlmonitor.middleware" or "prometheus_client.parser"
    path: Path
    line: int
    in_function: bool
    commented: bool   # a comment on the statement, or above the run of imports it belongs to

    def where(self) -> str:
        kind = "in a function" if self.in_function else "module level"
        return f"{self.path.relative_to(REPO)}:{self.line} ({kind})"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _commented_lines(source: str) -> set:
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            lines.add(token.start[0])
    return lines


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.AST, module: str, is_package: bool) -> list:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    # "from . import guard" imports the module mlmonitor.guard; "from .x import y" the module x
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return found or [base]


def imports_of(path: Path) -> list:
    source = path.read_text()
    module = module_name(path)
    comments = _commented_lines(source)
    found = []

    statements = [node for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))]
    import_lines = {line for node in statements for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)}

    def says_why(node: ast.AST) -> bool:
        """A comment on the statement, or above the run of imports it belongs to."""
        if set(range(node.lineno, (node.end_lineno or node.lineno) + 1)) & comments:
            return True
        line = node.lineno - 1
        while line in import_lines and line not in comments:
            line -= 1
        return line in comments

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for rest in child.orelse:
                    visit(rest, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, path.name == "__init__.py"):
                    found.append(Import(module, target, path, child.lineno, in_function, says_why(child)))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


ALL = [imp for path in MODULES.values() for imp in imports_of(path)]


def _own(target: str) -> str | None:
    """The mlmonitor module a target names (``mlmonitor.x.Name`` -> ``mlmonitor.x``), else None."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def _graph() -> dict:
    edges: dict = {name: {} for name in MODULES}
    for imp in ALL:
        target = _own(imp.target)
        if target is not None and target != imp.source:
            edges[imp.source].setdefault(target, imp)
    return edges


def _circles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges[node]:
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(found)


def _shortest_cycle(edges: dict, start: str, members: set) -> list:
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(edges[node]):
            if succ == start:
                return paths[node] + [start]
            if succ in members and succ not in paths:
                paths[succ] = paths[node] + [succ]
                queue.append(succ)
    return []


def test_the_walk_sees_the_package():
    assert {"mlmonitor", "mlmonitor.contract", "mlmonitor.tools", "mlmonitor.tools.cli"} <= set(MODULES)
    edges = _graph()
    assert "mlmonitor.contract" in edges["mlmonitor.tools.rules"]
    assert "mlmonitor.reference" in edges["mlmonitor.tools.profiling"]


def test_no_import_circle_among_mlmonitor_modules():
    edges = _graph()
    report = []
    for component in _circles(edges):
        members = set(component)
        cycle = _shortest_cycle(edges, component[0], members)
        inner = sorted((imp.source, target, imp.where()) for source in component
                       for target, imp in edges[source].items() if target in members)
        report.append(f"circle of {len(component)} modules: {', '.join(component)}\n"
                      f"  e.g. {' -> '.join(cycle)}\n"
                      + "\n".join(f"  {s} -> {t}  {where}" for s, t, where in inner))
    assert not report, "import circles (each import that keeps one closed is listed):\n" + "\n".join(report)


def test_request_time_modules_import_no_offline_code():
    bad = [f"{imp.source} imports {imp.target}  {imp.where()}" for imp in ALL
           if not imp.source.startswith(TOOLS)
           and any(imp.target == name or imp.target.startswith(name + ".") for name in OFFLINE)]
    assert not bad, "request-time code imports offline code:\n" + "\n".join(bad)


def test_offline_modules_live_in_their_subpackage():
    """What only offline work needs (the command line, CSV files) is imported only in mlmonitor/tools/."""
    bad = [f"{imp.source} imports {imp.target}  {imp.where()}" for imp in ALL
           if not imp.source.startswith(TOOLS) and imp.target in ("argparse", "csv")]
    assert not bad, "offline work outside mlmonitor/tools/:\n" + "\n".join(bad)


def test_every_function_local_import_says_why():
    def optional(target: str) -> bool:
        return any(target == name or target.startswith(name + ".") for name in OPTIONAL)

    bad = [f"{imp.where()}: {imp.target}" for imp in ALL
           if imp.in_function and not optional(imp.target) and not imp.commented]
    assert not bad, ("imports inside a function without a reason comment (an optional dependency needs none;"
                     " anything else says why: a measured start-up cost, POSIX only):\n" + "\n".join(bad))
