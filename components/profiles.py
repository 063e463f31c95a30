"""Sizes per profile. params.yaml picks one with `profile:`; keys written in params.yaml win.

- tiny: seconds per stage, for tests and CI.
- demo: the default; the whole pipeline in under 10 minutes on a 2-core CPU, and big
  enough that pretraining visibly helps the downstream task.
- gpu-small: GPT-2 124M / BERT-base shapes for a GPU worker.
"""
from __future__ import annotations

PROFILE_VALUES: dict[str, dict[str, dict]] = {
    "tiny": {
        "data": {"max_documents": 150},
        "downstream": {"max_examples_per_split": 120},
        "validate": {"min_documents": 20, "min_characters": 10_000},
        "tokenizer": {"vocab_size": 600},
        "tokenize": {"block_size": 64},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_ff": 64, "max_positions": 64},
        "pretrain": {"max_steps": 8, "batch_size": 8, "warmup_steps": 2, "eval_every": 4,
                     "eval_batches": 2, "log_every": 2, "checkpoint_every": 4},
        "finetune": {"epochs": 2, "batch_size": 16, "max_length": 64, "warmup_steps": 2, "lr": 1e-3},
        "evaluate": {"bootstrap_samples": 200},
    },
    "demo": {
        "tokenizer": {"vocab_size": 4000},
        "tokenize": {"block_size": 128},
        "model": {"n_layers": 2, "n_heads": 4, "d_model": 256, "d_ff": 1024, "max_positions": 128},
        "pretrain": {"max_steps": 450, "batch_size": 16, "warmup_steps": 30, "lr": 1e-3,
                     "eval_every": 150, "eval_batches": 16, "log_every": 15, "checkpoint_every": 150},
        "finetune": {"epochs": 3, "batch_size": 32, "max_length": 48, "warmup_steps": 20,
                     "lr": 5e-4, "patience": 2},
    },
    "gpu-small": {
        "tokenizer": {"vocab_size": 32_000, "model_max_length": 512},
        "tokenize": {"block_size": 512},
        "model": {"n_layers": 12, "n_heads": 12, "d_model": 768, "d_ff": 3072, "max_positions": 512},
        "pretrain": {"max_steps": 10_000, "batch_size": 32, "grad_accum": 4, "lr": 6e-4,
                     "warmup_steps": 500, "eval_every": 500, "eval_batches": 50, "log_every": 50,
                     "checkpoint_every": 500},
        "finetune": {"epochs": 4, "batch_size": 32, "max_length": 512, "warmup_steps": 100,
                     "lr": 5e-5, "patience": 2},
    },
}
