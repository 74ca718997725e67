"""The package's layout: imports flow one way through the pipeline's stages, no module imports
itself round a cycle, imports sit at the top of modules (optional dependencies aside), and
modules and functions stay readable in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "voxel_ode"
# each stage and what it may import (besides itself). The foundation modules import nothing of
# the package's; inference never imports training; nothing but the demo and the CLI sits on top
FOUNDATION = {"schema", "utils", "files", "metrics", "__init__"}
ALLOWED = {
    "foundation": set(),
    "physics": {"foundation"},
    "data": {"foundation", "physics"},
    "synth": {"foundation", "physics", "data"},
    "model": {"foundation", "data"},
    "training": {"foundation", "data", "model"},
    "inference": {"foundation", "physics", "data", "model"},
    "demo": {"foundation", "physics", "data", "synth", "model", "training", "inference"},
    "cli": {"foundation", "physics", "data", "synth", "model", "training", "inference", "demo"},
}
# optional dependencies, imported where used so the package works without them
LAZY_OK = {"wandb"}
# stages that must run without torch (prep and inspect on a machine without a GPU stack)
TORCH_FREE = {"physics", "data", "synth"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules():
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2:
        return "foundation" if parts[1] in FOUNDATION else parts[1]
    return parts[1]


def imports(path: Path):
    """(module-level imports, imports inside functions) as (name, line) of one file."""
    tree = ast.parse(path.read_text())
    top, inner = [], []
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            (inner if id(node) in nested else top).append((name, node.lineno))
    return top, inner


def package_edges():
    """{module: set of package modules it imports at module level}."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        edges[name] = {n for n, _ in imports(path)[0] if n in mods and n != name}
    return edges


def test_imports_flow_with_the_pipeline():
    wrong = []
    for module, targets in package_edges().items():
        here = stage(module)
        for target in targets:
            there = stage(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{module} imports {target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = package_edges()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                raise AssertionError("cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_imports_at_the_top_except_optional_dependencies():
    inside = [f"{name}:{line} imports {imp}" for name, path in modules().items()
              for imp, line in imports(path)[1] if imp.split(".")[0] not in LAZY_OK]
    assert not inside, "\n".join(inside)


def test_torch_free_stages():
    heavy = [f"{name} imports {imp}" for name, path in modules().items() if stage(name) in TORCH_FREE
             for imp, _ in imports(path)[0] if imp.split(".")[0] == "torch"]
    assert not heavy, "\n".join(heavy)


def test_modules_and_functions_fit_in_one_sitting():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_the_rules_catch_a_backward_import(tmp_path, monkeypatch):
    """The checks themselves: an inference module importing training code is reported."""
    fake = tmp_path / "voxel_ode"
    (fake / "inference").mkdir(parents=True)
    (fake / "training").mkdir()
    (fake / "training" / "loop.py").write_text("X = 1\n")
    (fake / "inference" / "step.py").write_text("from voxel_ode.training import loop\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    try:
        test_imports_flow_with_the_pipeline()
    except AssertionError as err:
        assert "voxel_ode.inference.step imports voxel_ode.training.loop (inference -> training)" in str(err)
    else:
        raise AssertionError("a backward import went unnoticed")
