"""Dynamic MLM masking: BERT's 80/10/10 rule, drawn fresh for every batch."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def word_index(word_starts: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """A batch-wide word number per position, from the tokenize stage's word starts.

    Every special token is a word of its own and so is the first position of every row and
    the token after any special one: a word cut by a block edge or by [SEP] is never glued
    to its neighbour, whatever the stored starts say.
    """
    starts = word_starts.bool() | special
    starts[:, 1:] |= special[:, :-1]
    starts[:, 0] = True
    return torch.cumsum(starts.reshape(-1).long(), 0).reshape(starts.shape) - 1


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: list[int],
    vocab_size: int,
    mlm_probability: float,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked inputs, labels). Special and pad tokens are never masked nor scored.

    `mlm_probability` of the other tokens are chosen; of those 80% become [MASK] (the
    first id in `special_ids` must be the mask id), 10% a random non-special token, 10%
    stay unchanged. Labels are -100 except at chosen positions.

    With `word_starts` (1 where a token begins a word, from the tokenizer's word ids at
    tokenize time, so WordPiece and byte-level BPE alike), whole words are chosen: each
    word with probability `mlm_probability`, which keeps the expected share of chosen
    tokens at `mlm_probability`; the 80/10/10 draw stays per token, as in BERT's
    whole-word-masking release.
    """
    mask_id = special_ids[0]
    device = input_ids.device

    def uniform(*shape: int) -> torch.Tensor:
        # Drawn where the generator lives, then moved: a CPU generator serves a CUDA batch
        # and the masks are the same on every device for a seed.
        return torch.rand(shape, generator=generator, device=generator.device).to(device)

    inputs = input_ids.clone()
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(special_ids, device=device))
    if word_starts is None:
        chosen = (uniform(*input_ids.shape) < mlm_probability) & ~special
    else:
        words = word_index(word_starts.to(device), special)
        n_words = int(words.max()) + 1 if words.numel() else 0
        chosen = (uniform(n_words) < mlm_probability)[words] & ~special
    labels[~chosen] = IGNORE_INDEX

    u = uniform(*input_ids.shape)
    to_mask = chosen & (u < 0.8)
    to_random = chosen & (u >= 0.8) & (u < 0.9)
    inputs[to_mask] = mask_id
    # Random replacements avoid special ids, so they never teach the model fake separators.
    non_special = torch.ones(vocab_size, dtype=torch.bool)
    non_special[torch.tensor(special_ids)] = False
    candidates = torch.nonzero(non_special).squeeze(1).to(device)
    picks = torch.randint(len(candidates), input_ids.shape, generator=generator, device=generator.device).to(device)
    inputs[to_random] = candidates[picks][to_random].to(inputs.dtype)
    return inputs, labels
