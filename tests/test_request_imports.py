"""Issue 26, item 7 (request-time half): the request-time modules import one another in one
direction only (no circle, function-local imports counted too), the settings import nothing above
them, and a function-local import says why it is one (an optional dependency, a measured start-up
cost, prometheus-client's import order, a probe)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "mlmonitor"
#: the offline tools live in mlmonitor/tools/, outside this glob; their imports are checked by
#: tests/test_imports.py
OFFLINE = {"tools"}


def _modules() -> Dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py")
            if p.stem not in OFFLINE and p.stem != "__init__"}


def _imports(tree: ast.Module) -> List[tuple]:
    """(target module, line, inside a function) of each relative import, TYPE_CHECKING aside."""
    found: List[tuple] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                names = [child.module] if child.module else [a.name for a in child.names]
                found.extend((name.split(".")[0], child.lineno, in_function) for name in names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def test_request_time_modules_import_one_another_without_a_circle():
    modules = _modules()
    graph: Dict[str, Set[str]] = {name: {target for target, _, _ in _imports(tree)
                                         if target in modules}
                                  for name, tree in modules.items()}
    circles = []
    state: Dict[str, int] = {}
    path: List[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert circles == []


def test_settings_import_only_what_sits_below_them():
    targets = {target for target, _, _ in _imports(_modules()["config"])}
    assert targets <= {"contract", "lineage", "routes"}


def test_a_function_local_import_says_why():
    unexplained = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in OFFLINE:
            continue
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                    block = [lines[n].strip() for n in range(node.lineno - 2, 0, -1)]
                    first = next((text for text in block if not text.startswith(
                        ("import ", "from "))), "")  # the line above a block of imports
                    if "#" not in line and "#" not in above and "#" not in first:
                        unexplained.append(f"{path.name}:{node.lineno}: {line.strip()}")
    assert unexplained == []
