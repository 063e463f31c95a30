"""Every path the stages exchange, in one place; dvc.yaml uses the same strings
(tests/test_dvc_yaml.py checks that they agree). The objective, architecture and run names
the functions take are listed in components/objectives.py."""
from __future__ import annotations

CORPUS_DIR = "data/corpus"
DOWNSTREAM_DIR = "data/downstream"
CORPUS_STATS = "reports/corpus_stats.json"
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

