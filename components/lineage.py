"""Lineage: which data, tokenizer and code a model came from, read from dvc.lock and git."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from components import paths
from components.tracking import git_state


def dvc_out_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Every stage output path in dvc.lock -> its content hash (md5 as DVC records it)."""
    lock_path = Path(lock_path)
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def params_digest(params_path: str | Path = "params.yaml") -> str:
    data = yaml.safe_load(Path(params_path).read_text()) or {}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def model_lineage(objective: str, lock_path: str | Path = "dvc.lock", params_path: str | Path = "params.yaml") -> dict[str, Any]:
    """Tags for a model version: git state, params hash and DVC hashes of its inputs."""
    hashes = dvc_out_hashes(lock_path)
    arch = paths.ARCHITECTURE[objective]
    wanted = {
        "corpus": paths.CORPUS_DIR,
        "tokenizer": paths.tokenizer_dir(arch),
        "tokenized": paths.tokenized_dir(objective),
        "pretrained": paths.pretrained_dir(objective),
        "finetuned": paths.finetuned_dir(objective),
    }
    lineage = {f"{k}_md5": hashes.get(v, "unknown") for k, v in wanted.items()}
    validation = Path(paths.VALIDATION_DIR) / "result.json"
    if validation.exists():
        lineage["validation_success"] = str(json.loads(validation.read_text()).get("success")).lower()
    return {"objective": objective, "params_sha256": params_digest(params_path), **git_state(), **lineage}
