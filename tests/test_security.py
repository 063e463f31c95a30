"""Security: weights load only from safetensors (torch.load only with weights_only=True),
trust_remote_code is never set, servers bind 127.0.0.1 by default, and a secret in the
environment never reaches an output, a database, an artifact or a log."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from conftest import FAKE_SECRET, LOG_DIR

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("components", "pipelines", "flows", "cli", "benchmarks", "tests")


def _python_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            yield node, owner, name


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_torch_load_always_passes_weights_only_true():
    offenders = []
    for path in _python_files():
        for call, owner, name in _calls(path):
            if owner == "torch" and name == "load":
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert offenders == [], "torch.load without weights_only=True (arbitrary code on load)"


def test_no_pickle_loading_and_no_trust_remote_code():
    offenders = []
    for path in _python_files():
        for call, owner, name in _calls(path):
            if owner in ("pickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}: {owner}.{name}")
            value = _keyword(call, "trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}: trust_remote_code")
    assert offenders == []


def test_checkpoints_keep_weights_in_safetensors():
    source = (ROOT / "components" / "train" / "checkpoint.py").read_text()
    assert "save_model(" in source and "load_model(" in source  # safetensors' own functions
    assert "model.state_dict()" not in source  # weights never go through torch.save's pickle


def test_servers_bind_127_0_0_1_by_default():
    from mlflow.cli import server
    from mlflow.models.cli import serve
    from prefect.settings import get_current_settings

    assert [p.default for p in server.params if p.name == "host"] == ["127.0.0.1"]  # mlflow server / ui
    assert [p.default for p in serve.params if p.name == "host"] == ["127.0.0.1"]  # mlflow models serve
    assert get_current_settings().server.api.host == "127.0.0.1"  # prefect server start


def test_nothing_in_the_repository_binds_all_interfaces():
    texts = [ROOT / "Makefile"]
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "data", "models", "mlartifacts")]
        texts += [Path(folder) / f for f in files if f.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".sh"))]
    pattern = re.compile(r"0\.0\.0\.0|--host[ =]+::(?!1)|\bhost:\s*['\"]?0\.0")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in texts for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and p.name != "test_security.py" and "RELIABILITY.md" not in p.name]
    assert offenders == []


@pytest.mark.slow
def test_a_secret_in_the_environment_reaches_no_output_database_artifact_or_log(dvc_repo):
    """conftest.py exports AWS_SECRET_ACCESS_KEY before the session pipeline runs: search
    every file the run wrote (data, models, reports, dvc.lock, the DVC cache, mlflow.db,
    mlartifacts), the stage logs and the Prefect home, byte for byte."""
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == FAKE_SECRET
    needle = FAKE_SECRET.encode()
    outputs = [dvc_repo / name for name in ("data", "models", "checkpoints", "reports", "mlartifacts", ".dvc/cache",
                                            "mlflow.db", "dvc.lock", "params.yaml")]  # not the copied source
    roots = [*outputs, LOG_DIR, Path(os.environ["PREFECT_HOME"])]
    searched, found = 0, []
    for root in roots:
        for path in (p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()):
            searched += 1
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(str(path))
    assert (dvc_repo / "mlflow.db").exists() and (LOG_DIR / "dvc-repro.log").exists()
    assert searched > 100 and found == []


@pytest.mark.slow
def test_every_model_the_pipeline_writes_is_safetensors(dvc_repo):
    pickled = [str(p.relative_to(dvc_repo)) for root in ("models", "mlartifacts") if (dvc_repo / root).exists()
               for p in (dvc_repo / root).rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert pickled == []
    assert list((dvc_repo / "models").rglob("model.safetensors"))


def test_one_redact_masks_environment_secrets_and_drops_url_credentials(monkeypatch):
    """The flow's logs and report use the registry's redact: what one masks, the other masks."""
    from components.registry import lineage
    from flows import report

    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", "tok-1234567890")
    text = "source s3://AKIAEXAMPLE:pw@bucket/c.jsonl, header tok-1234567890, ui https://user@mlflow.example/x"
    assert report.redact is lineage.redact
    assert lineage.redact(text) == "source s3://bucket/c.jsonl, header ***, ui https://mlflow.example/x"
