"""Lineage: which data, tokenizer, params and code a model came from, read from dvc.lock and git.

Everything here is a plain record (strings and numbers), so it can be written as MLflow tags,
as `lineage.json` next to a registered model, and printed by `lmforge lineage`. This module
owns the tag format (`lmforge.<field>`): the others write and read tags through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping


from components import paths
from components.io import load_yaml

# Environment variables whose values must never reach a tag, a param or an artifact.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.I)
# The user part of a URL, with or without a password: `https://token@host` carries a credential too.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)
TAG_PREFIX = "lmforge."
LOCK_FILE = "requirements.lock"  # `make lock` writes it (components/registry/environment.py checks it)
# Versions a model's lineage records beside the lock's hash: the ones that change its numbers.
RECORDED_PACKAGES = ("torch", "transformers", "tokenizers")
METRIC_PREFIXES = ("test_", "val_", "delta_", "majority_")


def redact(text: str) -> str:
    """`text` with credentials removed: values of secret-looking environment variables become
    `***`, and `user:password@` goes from URLs, which stay usable as links (a data source like
    `s3://key:secret@bucket` stays out of MLflow, a tracking server's password out of the logs)."""
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= 8 and value in text:
            text = text.replace(value, "***")
    return _URL_CREDENTIALS.sub(r"\g<scheme>", text)


def tag(field: str) -> str:
    """The MLflow tag of a lineage field: `git_commit` -> `lmforge.git_commit`."""
    return field if field.startswith(TAG_PREFIX) else TAG_PREFIX + field


def as_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """A record as MLflow tags, each value as text with credentials removed."""
    return {tag(k): redact(str(v)) for k, v in record.items()}


def from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The lmforge fields of a run's or a model version's tags, by field name."""
    return {k.removeprefix(TAG_PREFIX): v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


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
    return _out_hashes(load_yaml(lock_path.read_text()) or {})


def _out_hashes(lock: dict) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def corpus_manifest_digest(manifest_path: str | Path = paths.CORPUS_MANIFEST) -> str:
    """The digest of the packages and versions ``builtin:python-docs`` was read from (written by
    ingest in reports/corpus_manifest.json); "none" when the corpus read none, "unknown" when
    ingest has not written it. The corpus' DVC hash names its bytes; this names where they came from."""
    path = Path(manifest_path)
    if not path.exists():
        return "unknown"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return manifest.get("sha256", "unknown")[:16] if manifest.get("packages") else "none"


def lock_sha256(lock: str | Path = LOCK_FILE) -> str:
    """The lock file's hash, or `unknown` where there is none (a checkout without it)."""
    path = Path(lock)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "unknown"


def environment_record(lock: str | Path = LOCK_FILE) -> dict[str, str]:
    """What a registered model's lineage records of the environment that made it."""
    record = {"requirements_lock_sha256": lock_sha256(lock)}
    for dist in RECORDED_PACKAGES:
        try:
            record[f"{dist}_version"] = metadata.version(dist)  # keeps +cpu / +cu128: the build matters
        except metadata.PackageNotFoundError:
            record[f"{dist}_version"] = "not installed"
    return record


def params_digest(params_path: str | Path = "params.yaml") -> str:
    data = load_yaml(Path(params_path).read_text()) or {}
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
    head = _out_hashes(load_yaml(committed) or {})
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
    the validation verdict, the hash of the test split the metrics come from, and the
    environment (requirements.lock's hash; torch, transformers and tokenizers versions)."""
    hashes = dvc_out_hashes(lock_path)
    wanted = input_paths(run, architecture, pretrained)
    lineage = {"objective": run, **git_state()}
    committed = lineage["git_commit"] != "unknown" and lock_committed(wanted, lock_path)
    lineage["dvc_lock_committed"] = str(committed).lower()
    lineage["params_sha256"] = params_digest(params_path)
    params = load_yaml(Path(params_path).read_text()) or {}
    lineage["data_source"] = redact(str((params.get("data") or {}).get("source", "")))
    lineage["corpus_manifest_sha256"] = corpus_manifest_digest()
    lineage.update({f"{k}_md5": hashes.get(v, "unknown") for k, v in wanted.items()})
    lineage.update(validation_summary())
    test_split = Path(paths.DOWNSTREAM_DIR) / "test.parquet"
    lineage["test_split_sha256"] = file_digest(test_split)[:16] if test_split.exists() else "unknown"
    # The environment too: the same data and code under another torch can give other numbers.
    lineage.update(environment_record(Path(lock_path).with_name(LOCK_FILE)))
    return lineage


def version_chain(version, run=None) -> dict[str, Any]:
    """The chain model version -> runs -> params -> tokenizer -> tokenized data -> corpus -> commit,
    from a registered version's tags and the MLflow run that logged it (None once deleted)."""
    record = from_tags(version.tags)

    def field(key: str, default: str = "unknown") -> str:
        return record.get(key, default)

    metrics = {k: float(v) for k, v in record.items()
               if k.startswith(METRIC_PREFIXES) and not k.endswith(("_sha256", "_md5"))}
    commit = field("git_commit")
    return {
        "model": version.name, "version": int(version.version), "aliases": sorted(version.aliases),
        "task": field("task"), "weights_sha256": field("weights_sha256"), "promotion": field("promotion", ""),
        "run": {"id": version.run_id, "name": run.info.run_name if run else None,
                "stage": from_tags(run.data.tags).get("stage") if run else None},
        "finetune_run": {"id": field("finetune_run_id", ""), "matched_by": field("finetune_run_match", "")},
        "pretrain_run": {"id": field("pretrain_run_id", ""), "matched_by": field("pretrain_run_match", "")},
        "metrics": metrics,
        "params": {"sha256": field("params_sha256"), "artifact": "params.yaml"},
        "tokenizer": {"md5": field("tokenizer_md5")},
        "tokenized": {"md5": field("tokenized_md5", "n/a")},
        "pretrained": {"md5": field("pretrained_md5", "n/a")},
        "corpus": {"md5": field("corpus_md5"), "source": field("data_source", ""),
                   "manifest_sha256": field("corpus_manifest_sha256", "n/a")},
        "validation": {"md5": field("validation_md5"), "success": field("validation_success"),
                       "expectations": f"{field('validation_successful_expectations', '?')}/"
                                       f"{field('validation_evaluated_expectations', '?')}"},
        "test_split_sha256": field("test_split_sha256"),
        "environment": {"requirements_lock_sha256": field("requirements_lock_sha256"),
                        **{dist: field(f"{dist}_version") for dist in RECORDED_PACKAGES}},
        "git": {"commit": commit, "dirty": field("git_dirty") == "true",
                "dvc_lock_committed": field("dvc_lock_committed") == "true"},
        "restore": f"git checkout {commit} && dvc checkout",
    }
