"""Every path the stages exchange, in one place; dvc.yaml uses the same strings
(tests/test_dvc_yaml.py checks that they agree). The objective, architecture and run names
the functions take are listed in components/objectives.py."""
from __future__ import annotations

CORPUS_DIR = "data/corpus"
DOWNSTREAM_DIR = "data/downstream"
CORPUS_STATS = "reports/corpus_stats.json"
DECONTAMINATION = "reports/decontamination.json"
CORPUS_MANIFEST = "reports/corpus_manifest.json"
VALIDATION_DIR = "reports/validation"
TOKENIZERS_DIR = "data/tokenizers"
TOKENIZED_DIR = "data/tokenized"
PRETRAINED_DIR = "models/pretrained"
CHECKPOINTS_DIR = "checkpoints/pretrain"
PRETRAIN_REPORTS = "reports/pretrain"
FINETUNED_DIR = "models/finetuned"
FINETUNE_REPORTS = "reports/finetune"
COMPARISON_JSON = "reports/comparison.json"
COMPARISON_MD = "reports/comparison.md"
COMPARISON_PNG = "reports/comparison.png"
LOSS_PNG = "reports/pretraining_loss.png"
COMPARISON_METRICS = "reports/metrics.json"
REGISTRY_JSON = "reports/registry.json"


# Per-objective / per-architecture / per-run folders, one line each.
def tokenizer_dir(architecture: str) -> str: return f"{TOKENIZERS_DIR}/{architecture}"  # noqa: E704
def tokenized_dir(objective: str) -> str: return f"{TOKENIZED_DIR}/{objective}"  # noqa: E704
def tokenize_report(objective: str) -> str: return f"reports/tokenize/{objective}.json"  # noqa: E704
def pretrained_dir(objective: str) -> str: return f"{PRETRAINED_DIR}/{objective}"  # noqa: E704
def checkpoint_dir(objective: str) -> str: return f"{CHECKPOINTS_DIR}/{objective}"  # noqa: E704
def finetuned_dir(run: str) -> str: return f"{FINETUNED_DIR}/{run}"  # noqa: E704
def seed_model_dir(run: str, seed: int) -> str: return f"{finetuned_dir(run)}/seed-{seed}"  # noqa: E704
def selection_json(run: str) -> str: return f"{finetuned_dir(run)}/selection.json"  # noqa: E704


def primary_model_dir(run: str, root: str = ".") -> str:
    """The run's primary classifier (its first seed at the chosen lr): what the registry logs
    and serves and the register gate compares. Named in the run's selection.json, written
    by the finetune stage next to every seed's model (models/finetuned/<run>/seed-<s>/)."""
    import json
    from pathlib import Path

    selection = Path(root) / selection_json(run)
    if not selection.exists():
        raise FileNotFoundError(f"{selection}: missing; run the finetune stage for {run} first")
    return f"{finetuned_dir(run)}/{json.loads(selection.read_text())['primary']}"

