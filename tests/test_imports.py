"""The package's import graph: no cycles, and the config schema stays a leaf without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_chimed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, modules: set[str] = frozenset()) -> list[str]:
    """Every module a module imports, lazy imports inside functions included (deferring an
    import hides a cycle, it does not remove it). `from package import name` depends on
    package.name when that is a module, else on the package."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append(submodule if submodule in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(ast.parse(path.read_text()), set(modules))}
        graph[name] = {t for t in targets if t in modules and t != name}
        # Importing a.b.c runs the __init__ of a.b first (except a package of our own, which is
        # already being imported when we are).
        graph[name] |= {
            parent
            for t in graph[name]
            for parent in (t.rsplit(".", i)[0] for i in range(1, t.count(".") + 1))
            if parent in modules and parent != name and not name.startswith(parent + ".")
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_schema_is_a_leaf_without_torch() -> None:
    """config/schema.py, config/stages.py and config/eval.py import nothing of ours outside
    megatron_chimed.config, and importing the config package loads no torch (the Slurm login
    node reads configs)."""
    for name in ("schema.py", "stages.py", "eval.py"):
        tree = ast.parse((PACKAGE / "config" / name).read_text())
        ours = [m for m in _imports(tree) if m.startswith("megatron")]
        assert all(m.startswith("megatron_chimed.config") for m in ours), (name, ours)
    code = (
        "import sys, megatron_chimed.config; print(sorted(m for m in sys.modules if m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_test_imports_another_test_file() -> None:
    """Tests share helpers through megatron_chimed/testing/ (or conftest fixtures), never by
    importing each other: a test file's imports may name no module that lives under tests/."""
    tests = PACKAGE.parent / "tests"
    local = {"tests"} | {p.stem for p in tests.rglob("*.py")}
    local |= {p.name for p in tests.rglob("*") if p.is_dir()}
    offenders = {
        str(path.relative_to(tests)): sorted(hit)
        for path in tests.rglob("*.py")
        if (hit := {m.split(".")[0] for m in _imports(ast.parse(path.read_text()))} & local)
    }
    assert offenders == {}
