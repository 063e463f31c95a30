"""Imports flow one way: from the callers (stages, flows, CLI) down through the component areas
to the core modules, never up, and never in a cycle. Read from the source (tests/code_deps.py),
lazy imports inside functions included."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from code_deps import ROOT, imports, project_modules

# Lowest first: a module may import its own layer and the layers below it. Core is the
# components/ top level (and the `components` package itself).
LAYERS = {
    "core": ("components", "components.config", "components.params", "components.profiles", "components.paths",
             "components.io", "components.errors", "components.exit_codes"),
    "data": ("components.data",),
    "tokens": ("components.tokens",),
    "train": ("components.train",),
    "evaluate": ("components.evaluate",),
    "registry": ("components.registry",),
    "objectives": ("components.objectives",),
    "callers": ("pipelines", "flows", "cli"),
}
# Among the callers: a stage uses only the shared stage plumbing, never another stage; flows
# drive stages through DVC, never by import; the CLI may start flows.
CALLERS_MAY_IMPORT = {"pipelines": ("pipelines._stage",), "flows": ("flows",), "cli": ("cli", "flows")}
# Upward imports that another change removes; an entry that no longer applies fails, so it goes.
KNOWN: dict[tuple[str, str], str] = {}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS.values()):
        # core names modules one by one; the other layers are whole folders (or one module)
        if module in prefixes or (rank and any(_within(module, p) for p in prefixes)):
            return rank
    raise AssertionError(f"{module}: not in any layer; add it to LAYERS in {Path(__file__).name}")


def _wrong_way(module: str, target: str) -> str | None:
    """Why importing `target` from `module` breaks the layering, or None."""
    names = list(LAYERS)
    mine, theirs = layer_of(module), layer_of(target)
    if theirs > mine:
        return f"{module} ({names[mine]}) imports {target} ({names[theirs]}), a higher layer"
    if names[mine] == names[theirs] == "callers":
        caller = module.split(".")[0]
        allowed = CALLERS_MAY_IMPORT[caller]
        if target != caller and not any(_within(target, a) for a in allowed):
            return f"{module} imports {target}; among pipelines/flows/cli, {caller} may import only {', '.join(allowed)}"
    return None


def violations(root: Path = ROOT, known: dict | tuple = ()) -> list[str]:
    out = []
    for module, path in project_modules(root).items():
        for target, line in imports(module, root):
            why = _wrong_way(module, target)
            if why and (module, target) not in known:
                out.append(f"{path.relative_to(root).as_posix()}:{line}: {why}")
    return out


def cycles(root: Path = ROOT) -> list[list[str]]:
    graph = nx.DiGraph()
    for module in project_modules(root):
        graph.add_node(module)
        graph.add_edges_from((module, target) for target, _ in imports(module, root))
    return [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]


def test_no_module_imports_a_higher_layer():
    found = violations(known=KNOWN)
    assert not found, "upward imports:\n" + "\n".join(found)


@pytest.mark.parametrize("module, target", list(KNOWN))
def test_known_exceptions_still_apply(module, target):
    assert target in {t for t, _ in imports(module)} and _wrong_way(module, target), (
        f"{module} no longer imports {target}: delete its entry from KNOWN in {Path(__file__).name}")


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles (each set imports itself round): " + "; ".join(" <-> ".join(c) for c in found)


def _plant(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the project's packages with one import added to `module` (as a lazy import)."""
    import shutil

    for package in ("components", "pipelines", "flows", "cli"):
        shutil.copytree(ROOT / package, tmp_path / package)
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")
    return tmp_path


@pytest.mark.parametrize("module, line, expected", [
    ("components.paths", "from components.registry import tracking",
     "components.paths (core) imports components.registry.tracking (registry)"),
    ("components.data.corpus", "import components.train.loop", "(data) imports components.train.loop (train)"),
    ("pipelines.ingest", "from pipelines.validate import main", "pipelines.ingest imports pipelines.validate"),
    ("flows.report", "from pipelines import _stage", "flows.report imports pipelines._stage"),
])
def test_a_planted_upward_import_fails(tmp_path, module, line, expected):
    found = violations(_plant(tmp_path, module, line))
    assert any(expected in v for v in found), found


def test_a_planted_cycle_fails(tmp_path):
    root = _plant(tmp_path, "components.io", "from components import paths")
    _plant_into = root / "components" / "paths.py"
    _plant_into.write_text(_plant_into.read_text() + "\n\ndef _back():\n    from components import io\n")
    assert ["components.io", "components.paths"] in cycles(root)


def test_importing_components_changes_nothing_in_the_environment():
    """No import-time side effects: settings such as MLflow's retries are made when a run starts."""
    modules = [m for m in project_modules() if m.split(".")[0] == "components"]
    code = ("import importlib, json, os, sys\nbefore = dict(os.environ)\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [], "changed at import"


MAX_FUNCTION_LINES = 60


def long_functions(root: Path = ROOT) -> list[str]:
    """Functions in components/ and pipelines/ longer than MAX_FUNCTION_LINES (def to last line)."""
    import ast

    found = []
    for folder in ("components", "pipelines"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_components_or_pipelines_is_over_60_lines(tmp_path):
    assert long_functions() == []
    (tmp_path / "components").mkdir()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "components" / "big.py").write_text("def big():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert long_functions(tmp_path) == ["components/big.py:1 big (61 lines)"]
