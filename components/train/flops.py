"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak bf16 FLOP/s.

The accounting is PaLM's (appendix B; nanoGPT's `estimate_mfu` uses the same): each matmul
weight costs 6 FLOPs per token it is applied to (2 forward, 4 backward) and attention's
score and value matmuls add 12 * L * d * T per token (4 * L * d * T forward, no discount for
the causal mask), for each network trained (rtd: generator and discriminator). Only matmul weights count: embedding lookups (token, position, token
type), biases and norms do not; a tied output projection does, where it runs.
"""
from __future__ import annotations

# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), in FLOP/s.
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}
MASKED_ONLY = ("predictions", "generator_predictions", "generator_lm_head")
"""BERT's MLM head (transform + tied decoder) and ELECTRA's generator head: our MLM and RTD
losses run them on masked positions only."""
ONCE_PER_SEQUENCE = ("pooler", "seq_relationship")
"""BERT's pooler and NSP classifier: applied to the [CLS] position of each row."""


def _matmul_weights(model) -> tuple[int, int, int]:
    """(per token, masked positions only, once per sequence) counts of matmul weights."""
    import torch
    from transformers.pytorch_utils import Conv1D

    every = masked = per_sequence = 0
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue  # nn.Embedding (a lookup) and norms carry no matmul
        parts = set(name.split("."))
        n = module.weight.numel()
        if parts & set(MASKED_ONLY):
            masked += n
        elif parts & set(ONCE_PER_SEQUENCE):
            per_sequence += n
        else:
            every += n
    return every, masked, per_sequence


def networks(model) -> list:
    """The outermost transformers models in `model`: itself, or each network of a pair trained
    together (rtd's discriminator and generator), whose attention is counted each."""
    from transformers import PreTrainedModel

    found: list[tuple[str, object]] = []
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f"{n}.") or n == "" for n, _ in found):
            found.append((name, module))
    return [m for _, m in found]


def flops_per_token(model, seq_len: int, masked_fraction: float = 1.0, real_fraction: float = 1.0) -> float:
    """Useful training FLOPs per position of a `seq_len`-long row of a transformers model.

    `masked_fraction`: share of real tokens the MLM head runs on (pretrain.mlm_probability
    for our MLM loss; 1.0 where the head sees every token, as with transformers' labels=).
    `real_fraction`: share of positions that are real tokens, not padding (the tokenized
    split's packing_efficiency). The training loop counts every position in tokens/s, so
    padding is charged nothing here and MFU counts real tokens only.
    """
    if not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"flops_per_token: masked_fraction must be in [0, 1], got {masked_fraction}")
    if not 0.0 < real_fraction <= 1.0:
        raise ValueError(f"flops_per_token: real_fraction must be in (0, 1], got {real_fraction}")
    every, masked, per_sequence = _matmul_weights(model)
    attention = sum(12.0 * m.config.num_hidden_layers * m.config.hidden_size * seq_len for m in networks(model))
    per_real_token = 6.0 * (every + masked_fraction * masked) + attention
    return real_fraction * per_real_token + 6.0 * per_sequence / seq_len


def device_peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a known accelerator name, else None (no MFU is reported)."""
    for key, peak in PEAK_BF16.items():
        if key in device_name:
            return peak
    return None


def mfu(tokens_per_s: float, per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * per_token / peak


def pretraining_compute(per_position_flops: float, rows: int, block_size: int, real_fraction: float,
                        targets: dict) -> dict:
    """What a pretraining run consumed, for the comparison report beside each objective's verdict:
    positions seen (`rows` x `block_size`), the real (non-pad) tokens among them, the objective's
    supervised targets (`targets`: from its training spec's `supervised_targets`) and the
    training FLOPs by the accounting above (per position, padding charged nothing)."""
    positions = rows * block_size
    return {"rows": rows, "tokens_seen": positions, "real_tokens_seen": round(positions * real_fraction),
            **targets, "flops": per_position_flops * positions}
