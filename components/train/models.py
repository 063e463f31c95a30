"""Model configs per architecture, classifiers, and CPU attention precision (no hub downloads).

Which objective trains which model class is in its spec (components.objectives)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from components.config import ModelConfig


def transformers_config(config_class: str, names: Mapping[str, str | tuple[str, ...]], cfg: ModelConfig,
                        tokenizer, fixed: Mapping[str, Any] = (), **extra):
    """`config_class` (a transformers config class name) at `cfg`'s shape.

    `names` maps each ModelConfig field (and "vocab_size", "pad_token_id") to the class's own
    name(s) for it; `fixed` holds the architecture's other settings. One builder, so every
    architecture gets the same shape from the same params."""
    import transformers

    values = {**{f: getattr(cfg, f) for f in ("n_layers", "n_heads", "d_model", "d_ff", "max_positions", "dropout")},
              "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    kwargs = {}
    for field, targets in names.items():
        for target in (targets,) if isinstance(targets, str) else targets:
            kwargs[target] = values[field]
    return getattr(transformers, config_class)(**kwargs, **dict(fixed), **extra)


FP32_ATTENTION = "lmforge_sdpa_fp32"
"""Attention implementation name: SDPA computed in fp32 inside a bf16-autocast region."""


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import torch

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


@contextlib.contextmanager
def fast_cpu_attention(model, device, dtype):
    """Run attention in fp32 while the rest of a CPU bf16-autocast step runs in bf16.

    Why: on CPU, torch 2.13's bf16 flash-attention backward is ~2.5x slower than its fp32
    one at our head sizes (32-64), and it cost a third of a bf16 step at demo size
    (profiled: 45 vs 18 ms/step); the matmuls around it are where bf16 pays. Measured on
    the demo model (1 thread, CPU time): bf16 1.38x fp32 -> 1.68x with fp32 attention.
    No-op on GPU, in fp32, and for models not using SDPA. Restores "sdpa" on exit, so saved
    configs and later loads never see this name.
    """
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    from components.train.flops import networks

    # Every network trained (rtd trains two), each set as a whole.
    hf = [m for m in networks(model) if m.config._attn_implementation == "sdpa"]
    if device.type != "cpu" or dtype != torch.bfloat16 or not hf:
        yield
        return
    AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
    # The mask too: transformers builds no attention mask at all for an implementation name
    # it has no mask function for, so padding was silently attended to (a padded batch's
    # logits and gradients differed from fp32's; tests/train/test_training.py).
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)
    for network in hf:
        network.set_attn_implementation(FP32_ATTENTION)
    try:
        yield
    finally:
        for network in hf:
            network.set_attn_implementation("sdpa")


def _in_fp32(forward, device_type: str):
    import torch

    def run(*args, **kwargs):
        def up(x):
            return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        with torch.autocast(device_type, enabled=False):
            return forward(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    run.lmforge_fp32 = True
    return run


@contextlib.contextmanager
def fp32_head(model, head: Sequence[str], device, dtype):
    """Run the classifier head (`head`: its submodule paths, the architecture spec's
    `classifier_head`) in fp32 inside a low-precision autocast region.

    Why: BERT's pooler is tanh on [CLS], which saturates once its inputs grow. Under autocast
    its output is bf16, where every |y| > ~0.998 rounds to exactly 1.0, so tanh's backward
    (1 - y^2) passes exactly zero gradient through those units; in fp32 it passes a small
    one that AdamW scales to a full-size update (tests/test_precision.py).
    The head is a few small matmuls next to the encoder's (not timed at demo size yet).
    Wraps each module's forward for the duration (an instance attribute, removed on exit,
    so weights and saved models are untouched); re-entrant. No-op in fp32.
    """
    import torch

    modules = [model.get_submodule(path) for path in head] if dtype != torch.float32 else []
    with _forwards({m: _in_fp32(m.forward, device.type) for m in modules
                    if not getattr(m.forward, "lmforge_fp32", False)}):
        yield


@contextlib.contextmanager
def _forwards(replacements):
    """Each module's forward replaced (an instance attribute) for the duration, removed on exit."""
    for module, forward in replacements.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in replacements:
            del module.forward


DROPOUT_RESOLUTION = 1 << 15
"""fast_cpu_dropout draws 15 random bits per element: p is rounded to a multiple of 2^-15
(0.1 -> 0.100006)."""


@contextlib.contextmanager
def fast_cpu_dropout(model, device):
    """Run every `nn.Dropout` of `model` with a cheaper random mask on the CPU (`fit` does,
    with `finetune.fast_cpu_dropout`).

    Why: torch's CPU dropout draws a float Bernoulli per element (`bernoulli_`), then scales
    the mask and multiplies; at fine-tuning's shapes (32 x 48 tokens x 256) its forward and
    backward took 4.7 ms against 1.5 ms here (AMD EPYC, 2 threads; benchmarks/README.md),
    and dropout was about a fifth of a fine-tuning step. This draws 64 random bits per four
    elements from torch's generator (so `torch.manual_seed` and the checkpointed RNG state
    still fix it), keeps an element when its 15 bits are at or above p x 2^15, and scales the
    kept ones by 1/(1-p): inverted dropout, as torch's, with p rounded to 2^-15 and a
    different random stream (the same seed gives other masks than torch's). No-op off the
    CPU (CUDA's dropout is one fused kernel) and for p = 0. Attention-probability dropout
    inside SDPA is torch's own. Wraps each module's forward for the duration (an instance
    attribute, removed on exit), so saved models never see it.
    """
    import torch

    modules = model.modules() if device.type == "cpu" else ()
    with _forwards({m: _cheap_dropout(m) for m in modules
                    if isinstance(m, torch.nn.Dropout) and m.p > 0 and "forward" not in vars(m)}):
        yield


def _cheap_dropout(module):
    def forward(x):
        return cheap_dropout(x, module.p) if module.training else x

    return forward


def cheap_dropout(x, p: float):
    """Inverted dropout of `x` with fast_cpu_dropout's mask: 15 random bits an element (64 drawn
    from torch's generator per four), kept where they are at or above p x 2^15."""
    import torch

    if p == 0:
        return x
    if p >= 1:
        return x * 0
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
    keep = bits.view(torch.int16)[:n].view(x.shape).bitwise_and_(DROPOUT_RESOLUTION - 1)
    keep = keep >= round(p * DROPOUT_RESOLUTION)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def build_classifier(classifier_class: str, make_config: Callable[..., Any], labels: list[str],
                     pretrained_dir: Path | None):
    """A sequence classifier: from a pretrained directory, or a randomly initialised (scratch)
    `classifier_class` (a transformers class name) on `make_config(**extra)`.

    GPT-2 classifies from the last non-pad token, BERT from the pooled [CLS] token.
    """
    import torch
    import transformers

    label_kw = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    if pretrained_dir is not None:
        # A pretrained head with the classifier head's name (rtd's token classifier) must not
        # become the classifier's init: it is loaded (or skipped for another label count),
        # then initialised afresh as any other classifier head.
        heads = _checkpoint_heads(Path(pretrained_dir), ("classifier", "score"))
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(pretrained_dir), attn_implementation="sdpa", ignore_mismatched_sizes=bool(heads), **label_kw
        )
        std = getattr(model.config, "initializer_range", 0.02)
        for name in heads:  # the transformers init of a Linear head (N(0, initializer_range), zero bias)
            for module in model.get_submodule(name).modules():
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        torch.nn.init.zeros_(module.bias)
        return model
    return getattr(transformers, classifier_class)(make_config(attn_implementation="sdpa", **label_kw))


def _checkpoint_heads(model_dir: Path, names: Sequence[str]) -> list[str]:
    """Which of the top-level modules `names` a saved model's safetensors hold weights for."""
    from safetensors import safe_open

    found: set[str] = set()
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            found |= {key.split(".")[0] for key in f.keys()}
    return sorted(found & set(names))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
