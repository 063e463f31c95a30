"""MLflow Model Registry: register fine-tuned models, `challenger` -> `champion` behind a gate."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import tracking

CHALLENGER, CHAMPION = "challenger", "champion"
PIP_REQUIREMENTS = ["torch", "transformers", "safetensors", "tokenizers"]


@dataclass(frozen=True)
class RegisterConfig:
    """params.yaml `register`: names and the promotion gate."""

    model_prefix: str = "lmforge"
    """Registered names are `<prefix>-<objective>` (the fine-tuned classifier)."""
    gate_metric: str = "test_macro_f1"
    """Higher is better; compared with the current champion's on the same test split."""
    min_improvement: float = 0.0
    """A challenger must beat the champion by more than this to be promoted."""

    def __post_init__(self):
        if not self.model_prefix or not all(c.isalnum() or c in "-_." for c in self.model_prefix):
            raise ValueError(f"register.model_prefix must be letters, digits, '-', '_' or '.', got {self.model_prefix!r}")
        if self.gate_metric not in ("test_macro_f1", "test_accuracy"):
            raise ValueError(f"register.gate_metric must be test_macro_f1 or test_accuracy, got {self.gate_metric!r}")
        if self.min_improvement < 0:
            raise ValueError(f"register.min_improvement must be >= 0, got {self.min_improvement}")


def model_name(cfg: RegisterConfig, objective: str) -> str:
    return f"{cfg.model_prefix}-{objective}"


def weights_digest(model_dir: Path) -> str:
    """sha256 of the safetensors weights: the identity used to avoid duplicate versions."""
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{model_dir}: no .safetensors weights; run the finetune stage first")
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _metric_of(version, metric: str) -> float | None:
    value = version.tags.get(f"lmforge.{metric}")
    return float(value) if value is not None else None


def decide_promotion(challenger: float, champion: float | None, min_improvement: float) -> tuple[bool, str]:
    """The gate: promote when there is no champion or the challenger beats it by > min_improvement."""
    if champion is None:
        return True, "no champion yet"
    if challenger > champion + min_improvement:
        return True, f"{challenger:.4f} beats champion {champion:.4f} by more than {min_improvement}"
    return False, f"{challenger:.4f} does not beat champion {champion:.4f} by more than {min_improvement}"


def register_classifier(name: str, model_dir: Path, metrics: dict[str, float], tags: dict[str, str],
                        cfg: RegisterConfig) -> dict[str, Any]:
    """Log the model (transformers flavor), register it, alias it challenger, gate champion.

    Re-running with the same weights returns the existing version instead of a duplicate.
    """
    import mlflow
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if cfg.gate_metric not in metrics:
        raise ValueError(f"register: metrics for {name} lack the gate metric '{cfg.gate_metric}'")
    tracking.setup()
    client = MlflowClient()
    digest = weights_digest(model_dir)
    existing = [
        v for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("lmforge.weights_sha256") == digest
    ]
    if existing:
        version = existing[0]
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name="model",
            task="text-classification",
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=name,
        )
        version = client.get_model_version(name, str(info.registered_model_version))
        version_tags = {
            "lmforge.weights_sha256": digest,
            **{f"lmforge.{k}": f"{v:.6f}" for k, v in metrics.items()},
            **tags,
        }
        for key, value in version_tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        version = client.get_model_version(name, version.version)

    client.set_registered_model_alias(name, CHALLENGER, version.version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is not None and champion.version == version.version:
        promoted, reason = True, "already champion"
    else:
        score = _metric_of(version, cfg.gate_metric)
        champ_score = _metric_of(champion, cfg.gate_metric) if champion is not None else None
        promoted, reason = decide_promotion(score, champ_score, cfg.min_improvement)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_model_version_tag(name, version.version, "lmforge.promotion", reason)
    aliases = client.get_model_version(name, version.version).aliases
    return {"name": name, "version": int(version.version), "aliases": sorted(aliases),
            "promoted": promoted, "reason": reason, "new_version": not existing}
