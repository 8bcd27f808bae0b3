"""The package's shape: one concern per sub-package, no import cycles, short functions and modules, ruff clean.

Why: a newcomer finds the method, each detector's adapter, the data tools, evaluation and deployment from the
folder names alone, and a second detector family plugs in beside RT-DETR without touching the method.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "clipce_rtdetr"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """clipce_rtdetr modules `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clipce_rtdetr.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clipce_rtdetr"):
            for a in node.names:  # `from clipce_rtdetr.data import degrade` imports the module data.degrade
                sub = f"{node.module}.{a.name}"
                found.add(sub if (REPO / (sub.replace(".", "/") + ".py")).exists() else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {module_name(p): package_imports(p) for p in PKG.rglob("*.py")}
    return {m: {d for d in deps if d in graph and d != m and not m.startswith(d + ".")} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d, stack + [d])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [m])):
            return cycle
    return None


def test_no_import_cycles_between_modules():
    # `clipce_rtdetr` (the package's __init__) re-exports lazily and is left out: every module imports it first.
    graph = {m: deps - {"clipce_rtdetr"} for m, deps in import_graph().items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_method_imports_no_detector_data_or_deploy_module():
    graph = import_graph()
    method = [m for m in graph if m.startswith("clipce_rtdetr.method")]
    forbidden = ("clipce_rtdetr.models", "clipce_rtdetr.engine", "clipce_rtdetr.data", "clipce_rtdetr.deploy",
                 "clipce_rtdetr.eval", "clipce_rtdetr.cli")  # fmt: skip
    bad = {m: sorted(d for d in graph[m] if any(d == f or d.startswith(f + ".") for f in forbidden)) for m in method}
    assert not {m: d for m, d in bad.items() if d}


def test_importing_the_method_loads_no_detector_or_trainer():
    code = (
        "import json, sys, clipce_rtdetr.method.ame, clipce_rtdetr.method.embedding_cache, "
        "clipce_rtdetr.method.object_ids, clipce_rtdetr.method.prior, clipce_rtdetr.method.prompts\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    detector = ("ultralytics.models", "ultralytics.engine", "clipce_rtdetr.models", "clipce_rtdetr.engine")
    assert [m for m in loaded if m.startswith(detector)] == []


def long_functions() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_functions_and_modules_are_short():
    long_modules = [
        f"{p.relative_to(REPO)} ({n} lines)"
        for p in sorted(PKG.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long_functions() == [] and long_modules == []


def test_ruff_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with pip install -e '.[dev]')")
    out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], capture_output=True,
                         text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
