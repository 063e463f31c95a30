"""requirements.lock: compiled from pyproject.toml (a stale lock fails with the fix), pins that
satisfy pyproject's ranges, hashes on every line, and the make-installed venv equal to it."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from components.registry import environment

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / environment.LOCK_FILE


def test_the_lock_was_compiled_from_this_pyproject():
    problem = environment.staleness(LOCK, ROOT / environment.PYPROJECT)
    if problem:
        pytest.fail(problem, pytrace=False)  # one line: "requirements.lock is stale ...: run `make lock`"


def test_changing_a_range_without_make_lock_is_caught_with_the_fix(tmp_path):
    pyproject, lock = tmp_path / "pyproject.toml", tmp_path / "requirements.lock"
    shutil.copy(ROOT / "pyproject.toml", pyproject)
    shutil.copy(LOCK, lock)
    assert environment.staleness(lock, pyproject) is None
    pyproject.write_text(pyproject.read_text().replace('"numpy>=1.26"', '"numpy>=1.27"', 1))
    assert environment.staleness(lock, pyproject) == "requirements.lock is stale for pyproject.toml: run `make lock`"
    # Comments and unrelated tables are not the dependency lists: they leave the lock current.
    shutil.copy(ROOT / "pyproject.toml", pyproject)
    pyproject.write_text(pyproject.read_text() + "\n# a comment\n[tool.other]\nx = 1\n")
    assert environment.staleness(lock, pyproject) is None
    environment.stamp(lock, pyproject)  # what `make lock` ends with
    assert environment.staleness(lock, pyproject) is None


def test_every_pin_satisfies_pyproject_and_carries_hashes():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = environment.locked_pins(LOCK)
    for req in wanted:
        name = environment.canonical(req.name)
        if name == "torch":  # the Makefile installs it (CPU or CUDA build): never in the lock
            assert name not in pins
            continue
        assert name in pins, f"{req.name}: in pyproject.toml, not in requirements.lock; run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"
    text = LOCK.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1])
    pinned = [b for b in blocks if environment._PIN.match(b)]
    assert len(pinned) == len(pins) > 50
    assert all("--hash=sha256:" in b for b in pinned), "a lock line without hashes: `pip install --require-hashes` refuses it"
    assert "--find-links" not in text and "--index-url" not in text  # no machine's own paths in the lock


def test_torch_and_the_installed_versions_go_into_the_lineage():
    from importlib import metadata

    from components.registry.lineage import LOCK_FILE, environment_record, file_digest

    assert LOCK_FILE == environment.LOCK_FILE
    record = environment_record(LOCK)
    assert record["requirements_lock_sha256"] == file_digest(LOCK)
    for dist in ("torch", "transformers", "tokenizers"):
        assert record[f"{dist}_version"] == metadata.version(dist)
    assert environment_record(ROOT / "no-such.lock")["requirements_lock_sha256"] == "unknown"


def test_the_make_installed_venv_is_exactly_the_lock():
    """`make install` installs the lock with --require-hashes; a package at another version
    here means the install and the lock parted ways."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("runs under the venv `make install` built (.venv); this python is another")
    assert environment.installed_mismatches(LOCK) == []


def test_make_installs_the_lock_with_hashes_and_no_resolution():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, flags=re.M)
    assert "--require-hashes --no-deps -r $(LOCK)" in makefile and "pip check" in makefile
    assert "pip-compile" in makefile and "--generate-hashes" in makefile and "--unsafe-package torch" in makefile


def test_a_models_lineage_records_the_lock_hash_and_the_versions(tmp_path, monkeypatch):
    from importlib import metadata

    from components.registry.lineage import as_tags, file_digest, model_lineage

    shutil.copy(LOCK, tmp_path / "requirements.lock")
    (tmp_path / "params.yaml").write_text("data:\n  source: stdlib_docs\n")
    monkeypatch.chdir(tmp_path)  # a stage runs in the checkout: the lock beside dvc.lock
    tags = as_tags(model_lineage("mlm", "bert", pretrained=True))
    assert tags["lmforge.requirements_lock_sha256"] == file_digest(LOCK)
    assert tags["lmforge.torch_version"] == metadata.version("torch")
    assert tags["lmforge.transformers_version"] == metadata.version("transformers")
    assert tags["lmforge.tokenizers_version"] == metadata.version("tokenizers")
