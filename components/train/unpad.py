"""Fine-tuning on real tokens only (MosaicBERT's unpadding), through transformers' own modules.

A right-padded batch's real tokens are packed into one row: embeddings, every dense layer,
LayerNorm, GELU and dropout run on them alone, and attention pads them back around itself
(rows x width, the only place a row's own tokens must stay apart). The classifier reads each
row's token as the padded model does (its architecture's `unpadded_logits`: BERT's [CLS],
GPT-2's last token). Same weights and modules, so the saved model is the standard one and its
padded forward gives the same logits (tests/train/test_unpad.py); only the work on padding is gone (15% of fine-tuning's
positions at the demo's 100 labels) and, on the CPU with `finetune.fast_cpu_dropout`, the
attention probabilities' dropout is the cheap mask too (torch's SDPA draws a float Bernoulli).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F

from components.train.models import cheap_dropout

UNPADDED = "lmforge_unpadded"
"""The attention implementation name the packed forward runs under (registered as it runs)."""


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where a padded batch's real tokens went: `index` (T,) is each one's place in the
    flattened rows x width batch; `first` and `last` each row's first and last token in the
    packed row; `mask` (1, rows, 1 or width, width) what a padded query may attend to (its
    row's real keys; and no later ones for GPT-2)."""
    index: torch.Tensor
    rows: int
    width: int
    first: torch.Tensor
    last: torch.Tensor
    mask: torch.Tensor
    cheap_dropout: bool
    biases: dict = dataclasses.field(default_factory=dict)

    def bias(self, heads: int, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an additive bias for (heads x rows) score matrices: 0 or -inf, made
        once a step and shared by every layer."""
        if (heads, dtype) not in self.biases:
            bias = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device).masked_fill_(~self.mask, float("-inf"))
            self.biases[heads, dtype] = bias.expand(heads, *bias.shape[1:]).reshape(heads * self.rows, -1, self.width)
        return self.biases[heads, dtype]


def pack(batch: dict, causal: bool, cheap_dropout_on_cpu: bool) -> tuple[torch.Tensor, torch.Tensor, Packing]:
    """(input ids (1, T), position ids (1, T), Packing) of a right-padded batch."""
    mask = batch["attention_mask"].bool()
    rows, width = mask.shape
    if width > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("unpadded fine-tuning needs right-padded batches (collate's); set finetune.unpad: false")
    lengths = mask.sum(1)
    index = mask.flatten().nonzero().squeeze(1)
    ends = lengths.cumsum(0)
    keys = mask[None, :, None, :]
    if causal:
        keys = keys & torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    packing = Packing(index=index, rows=rows, width=width, first=ends - lengths, last=ends - 1, mask=keys,
                      cheap_dropout=cheap_dropout_on_cpu and mask.device.type == "cpu")
    return batch["input_ids"].flatten()[index][None], (index % width)[None], packing


def classifier_logits(model, batch: dict, forward, cheap_dropout_on_cpu: bool) -> torch.Tensor:
    """A sequence classifier's logits for a right-padded batch, computed on its real tokens
    only: what `model(**batch).logits` gives, up to float rounding and dropout's draws.
    `forward(model, ids, positions, packing)` is its architecture's `unpadded_logits`
    (components/objectives.py: which token the classifier reads)."""
    causal = any(getattr(m, "is_causal", False) for m in model.modules())  # GPT-2's attention
    ids, positions, packing = pack(batch, causal=causal, cheap_dropout_on_cpu=cheap_dropout_on_cpu)
    _register()
    config, before = model.config, model.config._attn_implementation
    config._attn_implementation = UNPADDED
    try:
        return forward(model, ids, positions, packing)
    finally:
        config._attn_implementation = before


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, lmforge_packing=None,
               **kwargs):
    """transformers' attention interface over a packed row: (1, heads, T, d) in, (1, T, heads,
    d) out; each row's tokens attend only to their own row, as in the padded model.

    Padded to (heads, rows, width, d), heads first: the packed row's own layout, so q, k and v
    need no copy to become matmul batches (a rows-first layout cost a transpose copy each)."""
    p = lmforge_packing
    heads, dim = query.shape[1], query.shape[-1]

    def padded(x):
        return x.new_zeros(heads, p.rows * p.width, dim).index_copy_(1, p.index, x[0])

    q, k, v = padded(query), padded(key), padded(value)
    scale = scaling if scaling is not None else 1 / math.sqrt(dim)
    device = query.device.type
    # As models.fast_cpu_attention: on the CPU, attention stays fp32 inside a bf16 step.
    fp32 = device == "cpu" and torch.is_autocast_enabled(device)
    with torch.autocast(device, enabled=False) if fp32 else contextlib.nullcontext():
        if fp32:
            q, k, v = q.float(), k.float(), v.float()
        if dropout > 0 and p.cheap_dropout:
            batches = (heads * p.rows, p.width, dim)
            scores = torch.baddbmm(p.bias(heads, q.dtype), q.view(batches), k.view(batches).transpose(1, 2), alpha=scale)
            out = torch.bmm(cheap_dropout(scores.softmax(-1), dropout), v.view(batches))
        else:
            shape = (heads, p.rows, p.width, dim)
            out = F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape), attn_mask=p.mask,
                                                 dropout_p=dropout, scale=scale)
    out = out.reshape(heads, p.rows * p.width, dim).index_select(1, p.index).to(query.dtype)
    return out.transpose(0, 1)[None], None


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(UNPADDED, _attention)
