"""Dynamic MLM masking: BERT's 80/10/10 rule, drawn fresh for every batch."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: list[int],
    vocab_size: int,
    mlm_probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked inputs, labels). Special and pad tokens are never masked nor scored.

    `mlm_probability` of the other tokens are chosen; of those 80% become [MASK] (the
    first id in `special_ids` must be the mask id), 10% a random non-special token, 10%
    stay unchanged. Labels are -100 except at chosen positions.
    """
    mask_id = special_ids[0]
    inputs = input_ids.clone()
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
    probs = torch.full(input_ids.shape, mlm_probability, device=input_ids.device)
    probs.masked_fill_(special, 0.0)
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels[~chosen] = IGNORE_INDEX

    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = chosen & (u < 0.8)
    to_random = chosen & (u >= 0.8) & (u < 0.9)
    inputs[to_mask] = mask_id
    # Random replacements avoid special ids, so they never teach the model fake separators.
    non_special = torch.ones(vocab_size, dtype=torch.bool)
    non_special[torch.tensor(special_ids)] = False
    candidates = torch.nonzero(non_special).squeeze(1).to(input_ids.device)
    picks = torch.randint(len(candidates), input_ids.shape, generator=generator, device=input_ids.device)
    inputs[to_random] = candidates[picks][to_random].to(inputs.dtype)
    return inputs, labels
