"""The shape of the package: no import cycles inside router/, no module past the size where it
starts owning two things, and nothing heavy behind `import router`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path("router")
MAX_LINES = 500
"""Lines of code a module may hold; data tables (word lists) do not count."""
PENDING_SPLITS: set[str] = set()
"""Modules other work in flight is splitting; each leaves this set when it is split."""


def module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`, which never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def imports_of(name: str) -> set[str]:
    """The router modules ``name`` imports, at module level or inside functions alike."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = _type_checking_only(tree)
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in MODULES and m != name}


def cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_inside_router() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    assert sum(map(len, graph.values())) > 50, "the import graph came out empty"
    cycle = cycle_from(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}) is None


def _data_lines(tree: ast.Module) -> int:
    """Lines of top-level assignments whose value is a literal table (word lists and the like)."""
    lines = 0
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords:
            value = value.args[0]  # frozenset({...}), tuple([...])
        try:
            ast.literal_eval(value)
        except ValueError:
            continue
        lines += (node.end_lineno or node.lineno) - node.lineno + 1
    return lines


def code_lines(path: Path) -> int:
    text = path.read_text()
    return len(text.splitlines()) - _data_lines(ast.parse(text))


def test_no_module_is_over_the_size_limit() -> None:
    over = {str(p): code_lines(p) for p in MODULES.values() if code_lines(p) > MAX_LINES}
    assert set(over) <= PENDING_SPLITS, {k: v for k, v in over.items()
                                         if k not in PENDING_SPLITS}
    assert set(over) == PENDING_SPLITS, (
        f"split: remove {sorted(PENDING_SPLITS - set(over))} from PENDING_SPLITS")


def test_importing_router_stays_light() -> None:
    code = ("import sys, router, router.cli, router.config, router.settings, router.schema; "
            "print(sorted(m for m in ('litestar', 'aiohttp', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
