"""The code's shape: no import cycles, shared code below the steps, steps independent.

Imports are read from the source (module level and inside functions alike: a lazy import is
still a dependency), so the test needs none of the heavy libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

from components.common import build_facts
from tests.conftest import ROOT

PACKAGES = ("components", "orchestration", "datagen")
SCRIPTS = ("pipeline.py",)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for script in SCRIPTS:
        modules[Path(script).stem] = ROOT / script
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports (`from a.b import c` is a.b.c when c is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in modules else node.module for n in names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def step_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "components" and len(parts) > 1 and parts[1] != "common":
        return parts[1]
    return None


def test_shared_code_never_imports_a_step():
    for module, targets in graph().items():
        if module.startswith("components.common"):
            assert not [t for t in targets if step_of(t)], module


def test_steps_do_not_import_each_other():
    """A step's folder holds only what is particular to it; what two steps need is common."""
    for module, targets in graph().items():
        step = step_of(module)
        if step:
            others = sorted(t for t in targets if step_of(t) not in (None, step))
            assert not others, f"{module} imports {others}"


def test_every_step_folder_is_a_step_or_a_service_in_the_build_facts():
    folders = {p.name for p in (ROOT / "components").iterdir()
               if p.is_dir() and not p.name.startswith(("_", "."))} - {"common"}
    assert folders == {i.name for i in build_facts.IMAGES}
    for step in build_facts.pipeline_steps():
        for name in ("__main__.py", "component.yaml", "README.md"):
            assert (ROOT / "components" / step / name).is_file(), f"{step}: no {name}"
