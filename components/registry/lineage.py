"""Lineage: which data, tokenizer, params and code a model came from, read from dvc.lock and git.

Everything here is a plain record (strings and numbers), so it can be written as MLflow tags,
as `lineage.json` next to a registered model, and printed by `lmforge lineage`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from components import paths

# Environment variables whose values must never reach a tag, a param or an artifact.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.I)


def redact(text: str) -> str:
    """`text` with credentials removed: values of secret-looking environment variables and
    `user:password@` in URLs (a data source like `s3://key:secret@bucket` stays out of MLflow)."""
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= 8 and value in text:
            text = text.replace(value, "***")
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def weights_digest(model_dir: str | Path) -> str:
    """sha256 of a model directory's safetensors weights: the identity of a model, used to
    avoid duplicate registry versions and to find the MLflow run that produced the weights."""
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{model_dir}: no .safetensors weights; run the stage that writes it first")
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dvc_out_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Every stage output path in dvc.lock -> its content hash (md5 as DVC records it)."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return {}
    return _out_hashes(yaml.safe_load(lock_path.read_text()) or {})


def _out_hashes(lock: dict) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def params_digest(params_path: str | Path = "params.yaml") -> str:
    data = yaml.safe_load(Path(params_path).read_text()) or {}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> dict[str, str]:
    """The commit the code ran from and whether tracked files had uncommitted changes."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def lock_committed(wanted: dict[str, str], lock_path: str | Path = "dvc.lock") -> bool:
    """Whether HEAD's committed dvc.lock records the same hashes for `wanted` paths as the
    working dvc.lock: only then does `git checkout <commit> && dvc checkout` bring them back."""
    committed = _git("show", f"HEAD:{Path(lock_path).as_posix()}")
    if not committed:
        return False
    head = _out_hashes(yaml.safe_load(committed) or {})
    now = dvc_out_hashes(lock_path)
    return all(head.get(p) == now.get(p) for p in wanted.values())


def input_paths(run: str, architecture: str, pretrained: bool) -> dict[str, str]:
    """The DVC outputs a fine-tuning run (an objective's, `pretrained`, or a scratch baseline) descends from."""
    wanted = {"corpus": paths.CORPUS_DIR, "downstream": paths.DOWNSTREAM_DIR,
              "validation": paths.VALIDATION_DIR, "tokenizer": paths.tokenizer_dir(architecture)}
    if pretrained:
        wanted["tokenized"] = paths.tokenized_dir(run)
        wanted["pretrained"] = paths.pretrained_dir(run)
    wanted["finetuned"] = paths.finetuned_dir(run)
    return wanted


def validation_summary(validation_dir: str | Path = paths.VALIDATION_DIR) -> dict[str, str]:
    """The Great Expectations result of the corpus gate: status and counts."""
    result_file = Path(validation_dir) / "result.json"
    if not result_file.exists():
        return {"validation_success": "unknown"}
    result = json.loads(result_file.read_text())
    stats = result.get("statistics") or {}
    out = {"validation_success": str(bool(result.get("success"))).lower()}
    for key in ("evaluated_expectations", "successful_expectations", "success_percent"):
        if key in stats:
            out[f"validation_{key}"] = str(stats[key])
    return out


def model_lineage(run: str, architecture: str, pretrained: bool, lock_path: str | Path = "dvc.lock",
                  params_path: str | Path = "params.yaml") -> dict[str, str]:
    """The lineage record of one fine-tuning run's models (classifier and, for an objective,
    its pretrained base): git state, params hash, data source, DVC hashes of every input,
    the validation verdict and the hash of the test split the metrics come from."""
    hashes = dvc_out_hashes(lock_path)
    wanted = input_paths(run, architecture, pretrained)
    lineage = {"objective": run, **git_state()}
    committed = lineage["git_commit"] != "unknown" and lock_committed(wanted, lock_path)
    lineage["dvc_lock_committed"] = str(committed).lower()
    lineage["params_sha256"] = params_digest(params_path)
    params = yaml.safe_load(Path(params_path).read_text()) or {}
    lineage["data_source"] = redact(str((params.get("data") or {}).get("source", "")))
    lineage.update({f"{k}_md5": hashes.get(v, "unknown") for k, v in wanted.items()})
    lineage.update(validation_summary())
    test_split = Path(paths.DOWNSTREAM_DIR) / "test.parquet"
    lineage["test_split_sha256"] = file_digest(test_split)[:16] if test_split.exists() else "unknown"
    return lineage
