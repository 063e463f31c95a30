"""The project's import graph, read from the source with `ast` (nothing is imported), and the
code deps of each DVC stage derived from it.

Every import counts, lazy ones inside functions included: a stage that imports a module only
on one branch still runs it on that branch. tests/test_layering.py checks the graph's
direction; tests/test_dvc_deps.py checks dvc.yaml against `stage_code_deps`.

Rewrite dvc.yaml's code deps from the imports (comments and data deps stay):
    make deps        (or: python tests/code_deps.py --write)
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipelines", "flows", "cli")
DVC_YAML = ROOT / "dvc.yaml"


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (`components.data` -> components/data/__init__.py), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project packages: dotted name -> file."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(name: str, root: Path) -> str | None:
    """The longest prefix of `name` that is a project module (`a.b.func` -> `a.b`)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if module_path(".".join(parts[:end]), root):
            return ".".join(parts[:end])
    return None


def imports(module: str, root: Path = ROOT) -> list[tuple[str, int]]:
    """(project module, line) for every import statement in `module`, at any depth."""
    path = module_path(module, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports the submodule a.b when there is one, else a name from a.
            names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] or [base]
        for name in names:
            target = _resolve(name, root)
            if target and target != module:
                found.append((target, node.lineno))
    return found


def _has_code(path: Path) -> bool:
    """Whether a file does more than hold a docstring (an `__init__.py` that runs something)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def closure(module: str, root: Path = ROOT) -> set[str]:
    """`module` and every project module it imports, transitively, with the packages on the way
    whose `__init__.py` runs code (docstring-only ones change nothing a stage computes)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [target for target, _ in imports(current, root)]
        parts = current.split(".")
        todo += [p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                 if _has_code(module_path(p, root))]
    return seen


def _stage_body(stage: dict) -> dict:
    return stage.get("do", stage)


def _stage_module(name: str, body: dict) -> str:
    found = re.match(r"python -m (\S+)", body["cmd"])
    if not found:
        raise ValueError(f"dvc.yaml stage {name}: cmd must start with `python -m <module>`, got {body['cmd']!r}")
    return found.group(1)


def is_code_dep(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def stage_code_deps(name: str, stage: dict, root: Path = ROOT) -> list[str]:
    """The files a stage's command imports, its own module first: the code deps it must declare."""
    module = _stage_module(name, _stage_body(stage))
    files = {m: module_path(m, root).relative_to(root).as_posix() for m in closure(module, root)}
    own = files.pop(module)
    return [own, *sorted(files.values())]


def _load(root: Path = ROOT):
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and quoting survive a rewrite
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml, yaml.load((root / "dvc.yaml").read_text())


def drift(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (code deps it imports but does not declare, declared code deps it does not import)}."""
    _, data = _load(root)
    out = {}
    for name, stage in data["stages"].items():
        declared = [d for d in _stage_body(stage).get("deps", []) if is_code_dep(str(d))]
        derived = stage_code_deps(name, stage, root)
        missing = [d for d in derived if d not in declared]
        extra = [d for d in declared if d not in derived]
        if missing or extra:
            out[name] = (missing, extra)
    return out


def write(root: Path = ROOT) -> list[str]:
    """Rewrite every stage's code deps from its imports (data deps keep their order after them);
    returns the stages that changed."""
    yaml, data = _load(root)
    changed = []
    for name, stage in data["stages"].items():
        deps = _stage_body(stage)["deps"]
        wanted = stage_code_deps(name, stage, root) + [d for d in deps if not is_code_dep(str(d))]
        if list(deps) != wanted:
            deps[:] = wanted
            changed.append(name)
    if changed:
        with open(root / "dvc.yaml", "w") as f:
            yaml.dump(data, f)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        changed = write()
        print(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: code deps up to date")
        return 0
    if argv == ["--check"]:
        problems = drift()
        for name, (missing, extra) in problems.items():
            print(f"{name}: missing {missing or '-'}; not imported {extra or '-'}", file=sys.stderr)
        return 1 if problems else 0
    print("usage: python tests/code_deps.py --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
