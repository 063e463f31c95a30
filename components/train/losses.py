"""The language-model head and its cross-entropy as one step, in row chunks.

`F.cross_entropy(hidden @ W.T, targets)` as transformers computes it materialises the
logits, upcasts them to fp32, writes a log-softmax of the same size, and in backward fills a
zero tensor of that size, scatters into it, and runs the log-softmax backward: five passes
over a (tokens x vocabulary) array, all in fp32 whatever the autocast dtype, so they do not
get faster in bf16 (at demo size they were a fifth of a CPU step). Here the gradient of the
logits is known in the forward pass (softmax minus one-hot), so each chunk of rows does
one matmul, one exp pass, and the two gradient matmuls at once, keeps only the gradients
of the hidden states and of the weight (and bias), and never holds more than `chunk` rows of
logits. Matmuls run in the autocast dtype (bf16 on this CPU), the softmax in fp32. CLM's head
(every position, no bias) and MLM's decoder (the masked positions, after the head's
transform, with BERT's bias) train through it; evaluation computes full logits for its counts.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_ROWS = 1024


def top1(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)`: the same indices (the first of tied maxima, as torch.max documents),
    through `max`, which torch runs ~4x faster on the CPU. Measured on an MLM step's head
    (604 x 4000 bf16 logits, Intel Xeon with AMX, 2 threads): 1.0 vs 4.1 ms; argmax was 8% of
    the bf16 step's profile there."""
    return logits.max(-1).indices


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = CHUNK_ROWS, bias: torch.Tensor | None = None,
                         denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T + bias` (rows x vocabulary) against `targets`,
    summed over the rows whose target is not IGNORE_INDEX and divided by `denominator`
    (default: their count, at least 1: the mean, 0 if all are ignored)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        trains = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
        if not (torch.is_grad_enabled() and trains):
            return _loss_only(hidden.to(dtype), weight.to(dtype), _cast(bias, dtype), targets, chunk, denominator)
        return _LinearCrossEntropy.apply(hidden.to(dtype), weight, bias, targets, chunk, denominator)


def _cast(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(dtype)


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, t: torch.Tensor):
    """fp32 logits of a chunk, which rows count, and targets safe to index with. The bias goes
    in with the matmul (addmm), as nn.Linear adds it under autocast: the same rounding."""
    keep = t != IGNORE_INDEX
    safe = torch.where(keep, t, 0)
    logits = (h @ w.t() if b is None else torch.addmm(b, h, w.t())).float()
    return logits, keep, safe


def _loss_only(hidden, w, b, targets, chunk, denominator) -> torch.Tensor:
    total = hidden.new_zeros((), dtype=torch.float32)
    count = 0
    for s in range(0, hidden.shape[0], chunk):
        logits, keep, safe = _chunk_logits(hidden[s:s + chunk], w, b, targets[s:s + chunk])
        per_row = torch.logsumexp(logits, -1) - logits.gather(1, safe[:, None]).squeeze(1)
        total = total + (per_row * keep).sum()
        count += int(keep.sum())
    return total / (denominator if denominator is not None else max(count, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, denominator):
        w, b = weight.to(hidden.dtype), _cast(bias, hidden.dtype)
        # A tensor: no host sync in the step.
        count = (targets != IGNORE_INDEX).sum().clamp_min(1) if denominator is None else denominator
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk], targets[s:s + chunk]
            logits, keep, safe = _chunk_logits(h, w, b, t)
            target_logit = logits.gather(1, safe[:, None]).squeeze(1)
            peak = logits.amax(-1, keepdim=True)
            probs = logits.sub_(peak).exp_()          # in place: the logits are not needed again
            norm = probs.sum(-1, keepdim=True)
            lse = (peak + norm.log()).squeeze(1)
            total += ((lse - target_logit) * keep).sum()
            # d(loss)/d(logits) = (softmax - one_hot) / count, zero on ignored rows.
            probs.mul_(keep[:, None] / (norm * count))
            probs.scatter_add_(1, safe[:, None], -(keep.float() / count)[:, None])
            g = probs.to(hidden.dtype)
            grad_hidden[s:s + chunk] = g @ w
            grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += probs.sum(0)  # still fp32: no upcast of g
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (grad_hidden * grad_output.to(grad_hidden.dtype), (grad_weight * grad_output).to(weight_dtype),
                None if grad_bias is None else (grad_bias * grad_output).to(bias_dtype), None, None, None)
