"""dvc.yaml's code deps are exactly what each stage imports, so changing a module reruns exactly
the stages that use it (tests/code_deps.py derives them; `make deps` rewrites dvc.yaml)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from code_deps import PACKAGES, ROOT, _load, drift, is_code_dep, stage_code_deps, write

STAGES = list(_load()[1]["stages"])


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_match_the_imports(stage):
    missing, extra = drift().get(stage, ([], []))
    assert not missing and not extra, (
        f"dvc.yaml stage {stage}: imports but does not declare {missing or '-'}; declares but does not "
        f"import {extra or '-'}; run `make deps` (python tests/code_deps.py --write)")


def test_code_deps_are_files_not_folders():
    for stage in _load()[1]["stages"].values():
        for dep in stage.get("do", stage)["deps"]:
            if is_code_dep(str(dep)):
                assert (ROOT / dep).is_file(), f"dvc.yaml dep {dep}: name the modules, not a folder"


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package)
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_write_restores_a_deleted_dep_and_keeps_the_rest(tmp_path):
    root = _copy(tmp_path)
    original = (root / "dvc.yaml").read_text()
    assert write(root) == [], "dvc.yaml is out of date: run `make deps`"
    assert (root / "dvc.yaml").read_text() == original, "a rewrite with nothing to change must keep the file as is"
    dropped = stage_code_deps("pretrain", _load(root)[1]["stages"]["pretrain"], root)[-1]
    (root / "dvc.yaml").write_text("".join(line for line in original.splitlines(keepends=True)
                                           if line.strip() != f"- {dropped}"))
    assert drift(root)["pretrain"] == ([dropped], [])
    assert "pretrain" in write(root)
    assert drift(root) == {}
    assert "# checkpoints/pretrain/${item} is left out of the outs on purpose" in (root / "dvc.yaml").read_text()
