"""Replaced-token detection (ELECTRA; Clark et al., ICLR 2020): a small masked-LM generator
fills the masked positions with tokens sampled from its own predictions, and the
discriminator, the model that is kept, learns for every real token whether it was replaced.
MLM learns from the masked share of the tokens; the discriminator from all of them.

Both networks are standard transformers classes. The discriminator is a
`BertForTokenClassification` with two labels (original, replaced): the objectives' BERT
encoder with a per-token head, so its saved directory loads through
`AutoModelForTokenClassification` and serves as a `token-classification` pipeline, and the
fine-tuned classifier and its scratch twin are the same BERT as mlm's (the comparison varies
the objective only). The generator is an `ElectraForMaskedLM` at a fraction of the
discriminator's width whose embedding layer *is* the discriminator's (ELECTRA shares token
and position embeddings; its `embedding_size` projection maps them to the narrower width),
and whose output layer is tied to those token embeddings. Only the discriminator is saved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from components.train.collators import IGNORE_INDEX
from components.train.losses import top1

ORIGINAL, REPLACED = 0, 1
LABELS = {ORIGINAL: "original", REPLACED: "replaced"}


class DisentangledEmbedding(torch.nn.Module):
    """DeBERTaV3's gradient-disentangled embedding sharing (He et al. 2021, GDES): the
    discriminator's token embeddings are the shared table outside its gradient plus a delta
    of its own, zero at the start. The generator's MLM loss alone moves the shared table; the
    discriminator's (weighted 50) moves only the delta, ending the tug-of-war over one table."""

    def __init__(self, shared: torch.nn.Embedding):
        super().__init__()
        object.__setattr__(self, "shared", shared)  # the generator's module, not registered twice
        self.delta = torch.nn.Parameter(torch.zeros_like(shared.weight))
        self.padding_idx = shared.padding_idx
        self.num_embeddings, self.embedding_dim = shared.num_embeddings, shared.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return self.shared.weight.detach() + self.delta

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx)

    def folded(self) -> torch.nn.Embedding:
        """A standard embedding layer holding the sum, as the saved discriminator has."""
        out = torch.nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                                 device=self.delta.device, dtype=self.delta.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
        return out


class ReplacedTokenModel(torch.nn.Module):
    """Discriminator and generator trained together, one embedding layer between them; with
    `disentangled`, the token table is the generator's and the discriminator adds its own
    delta (DisentangledEmbedding), the position and token-type tables and their LayerNorm
    still one."""

    def __init__(self, discriminator, generator, disentangled: bool = False):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        embeddings = discriminator.bert.embeddings
        if disentangled:
            ours = generator.electra.embeddings
            for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
                setattr(ours, name, getattr(embeddings, name))
            embeddings.word_embeddings = DisentangledEmbedding(ours.word_embeddings)
            generator.generator_lm_head.weight = ours.word_embeddings.weight
        else:
            generator.electra.embeddings = embeddings
            generator.generator_lm_head.weight = embeddings.word_embeddings.weight

    def saved_discriminator(self):
        """The discriminator as saved: itself, or with disentangled embeddings a copy whose
        token embeddings are the folded sum (a plain `BertForTokenClassification`)."""
        words = self.discriminator.bert.embeddings.word_embeddings
        if not isinstance(words, DisentangledEmbedding):
            return self.discriminator
        import copy

        embeddings = self.discriminator.bert.embeddings
        embeddings.word_embeddings = words.folded()  # copied in place of the delta and the shared table
        try:
            return copy.deepcopy(self.discriminator)
        finally:
            embeddings.word_embeddings = words


def generator_shape(d_model: int, n_heads: int, d_ff: int, width: float) -> dict:
    """The generator's hidden size, heads and feed-forward size at `width` times the
    discriminator's, heads of the discriminator's size where they fit (ELECTRA scales the
    generator's hidden size, heads and feed-forward together and keeps its depth)."""
    head_size = d_model // n_heads
    hidden = max(head_size, round(d_model * width / head_size) * head_size)
    return {"hidden_size": hidden, "num_attention_heads": hidden // head_size,
            "intermediate_size": max(1, round(d_ff * hidden / d_model))}


def build_replaced_token_model(discriminator_config, width: float, disentangled: bool = False) -> ReplacedTokenModel:
    """The discriminator from its (BERT) config with two labels, the generator an ELECTRA
    masked LM of the same depth at `width` of its hidden size, token embeddings at the
    discriminator's width, shared (or gradient-disentangled)."""
    import transformers

    config = discriminator_config
    config.num_labels = 2
    config.id2label, config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    discriminator = transformers.BertForTokenClassification(config)
    shape = generator_shape(config.hidden_size, config.num_attention_heads, config.intermediate_size, width)
    generator_config = transformers.ElectraConfig(
        vocab_size=config.vocab_size, embedding_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, pad_token_id=config.pad_token_id,
        hidden_dropout_prob=config.hidden_dropout_prob, attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        attn_implementation=config._attn_implementation, **shape)
    return ReplacedTokenModel(discriminator, transformers.ElectraForMaskedLM(generator_config), disentangled)


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of `logits`, drawn from its softmax by inverting the CDF at `uniform`
    (one U(0,1) draw per row, made with the batch: exact sampling that repeats on resume and
    under any number of DDP ranks). The softmax is taken in fp32."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)
    picks = torch.searchsorted(cdf, uniform.float().unsqueeze(-1)).squeeze(-1)
    return picks.clamp_(max=logits.shape[-1] - 1)


class ReplacedTokenTraining:
    """ELECTRA's batches and loss: `mask_probability` of the non-special tokens become
    [MASK] (all of them: ELECTRA masks without BERT's 10/10 random/kept share); the generator
    predicts them (its MLM loss), a token sampled from its prediction replaces each, and the
    discriminator labels every real token original or replaced (a sampled token equal to the
    original counts as original). Loss = generator MLM loss + `discriminator_weight` x
    discriminator loss (ELECTRA's 50). Sampling is outside the gradient, as in ELECTRA.

    The replacement curriculum: a share of the masked positions, `uniform_start` at the first
    step annealed linearly to `uniform_end` at the last (`prepare`'s `progress`), takes a
    token drawn uniformly from the non-special vocabulary instead of the generator's sample.
    Validation uses the end share, and counts replacements of each kind apart."""

    def __init__(self, tokenizer, mask_probability: float, discriminator_weight: float,
                 uniform_start: float = 0.0, uniform_end: float = 0.0):
        self.mask_probability = mask_probability
        self.discriminator_weight = discriminator_weight
        self.uniform_start, self.uniform_end = uniform_start, uniform_end
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.ordinary_ids = torch.tensor(sorted(set(range(len(tokenizer))) - set(self.special_ids)))
        # Never a generator target, so never the most-frequent baseline's guess.
        self.baseline_excluded = tuple(self.special_ids)

    def uniform_share(self, progress: float) -> float:
        """The share of masked positions replaced uniformly at `progress` (0 first step, 1 last)."""
        return self.uniform_start + (self.uniform_end - self.uniform_start) * min(max(progress, 0.0), 1.0)

    def prepare(self, raw: dict, generator: torch.Generator, progress: float = 1.0) -> dict:
        input_ids = raw["input_ids"]
        device = input_ids.device

        def uniform(*shape: int) -> torch.Tensor:  # drawn where the generator lives (masks equal on any device)
            return torch.rand(shape, generator=generator, device=generator.device).to(device)

        special = torch.isin(input_ids, torch.tensor(self.special_ids, device=device))
        chosen = (uniform(*input_ids.shape) < self.mask_probability) & ~special
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        batch = {"input_ids": torch.where(chosen, torch.full_like(input_ids, self.mask_id), input_ids),
                 "labels": labels, "original_ids": input_ids, "sample_uniform": uniform(*input_ids.shape),
                 "attention_mask": (input_ids != self.pad_id).long()}
        if self.uniform_start or self.uniform_end:  # else no draws: ELECTRA's batches as they were
            share = self.uniform_share(progress)
            picked = (uniform(*input_ids.shape) < share) & chosen
            ordinary = self.ordinary_ids.to(device)
            index = (uniform(*input_ids.shape) * len(ordinary)).long().clamp_(max=len(ordinary) - 1)
            batch["uniform_ids"] = torch.where(picked, ordinary[index], torch.full_like(input_ids, -1))
        return batch

    def loss_denominators(self, batch: dict, world_size: int) -> dict:
        """Under DDP each rank divides its summed losses by the global counts over the world
        size (as MaskedLMTraining does), so the averaged gradients are one process's."""
        device = batch["labels"].device
        masked = max(1, int((batch["labels"] != IGNORE_INDEX).sum()))
        real = max(1, int(batch["attention_mask"].sum()))
        return {"mlm_denominator": torch.tensor(masked / world_size, device=device),
                "rtd_denominator": torch.tensor(real / world_size, device=device)}

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The training loss alone (`forward`'s: the generator's logits are sampled from, so
        its head is not fused into the loss as MLM's is)."""
        return self.forward(model, batch)["loss"]

    def forward(self, model, batch: dict) -> dict:
        generator, discriminator = model.generator, model.discriminator
        chosen = batch["labels"] != IGNORE_INDEX
        targets = batch["labels"][chosen]
        hidden = generator.electra(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        # The generator's head on the masked positions only, as the MLM objective's.
        logits = generator.generator_lm_head(generator.generator_predictions(hidden[chosen]))
        mlm_loss = F.cross_entropy(logits.float(), targets, reduction="sum") / batch.get(
            "mlm_denominator", max(1, targets.numel()))
        with torch.no_grad():
            sampled = sample_tokens(logits.detach(), batch["sample_uniform"][chosen])
            corrupted = batch["original_ids"].clone()
            corrupted[chosen] = sampled
            if "uniform_ids" in batch:  # the curriculum's uniform replacements
                corrupted = torch.where(batch["uniform_ids"] >= 0, batch["uniform_ids"], corrupted)
            replaced = (corrupted != batch["original_ids"]).long()
        real = batch["attention_mask"].bool()
        rtd_logits = discriminator(input_ids=corrupted, attention_mask=batch["attention_mask"]).logits[real]
        rtd_targets = replaced[real]
        rtd_loss = F.cross_entropy(rtd_logits.float(), rtd_targets, reduction="sum") / batch.get(
            "rtd_denominator", max(1, rtd_targets.numel()))
        n_masked, n_real = targets.numel(), rtd_targets.numel()
        found = (top1(rtd_logits) == REPLACED) & (rtd_targets == REPLACED)
        out = {
            "loss": mlm_loss + self.discriminator_weight * rtd_loss,
            "loss_sum": mlm_loss.detach() * n_masked, "count": n_masked,
            "mlm_correct": (top1(logits) == targets).sum(),
            "rtd_loss_sum": rtd_loss.detach() * n_real, "rtd_count": n_real,
            "rtd_correct": (top1(rtd_logits) == rtd_targets).sum(),
            "rtd_replaced": rtd_targets.sum(),
            "rtd_replaced_found": found.sum(),
        }
        if "uniform_ids" in batch:
            uniform = (batch["uniform_ids"][real] >= 0) & (rtd_targets == REPLACED)
            out["rtd_uniform_replaced"] = uniform.sum()
            out["rtd_uniform_found"] = (found & uniform).sum()
        return out

    def baseline_sums(self, batch: dict, baseline) -> dict:
        """The generator's baselines over its targets (the masked tokens); the discriminator's
        trivial baseline, always answering "original", needs only the replaced count that
        `forward` returns."""
        labels = batch["labels"]
        return baseline.sums(labels[labels != IGNORE_INDEX])

    def supervised_targets(self, rows: int, block_size: int, real_tokens: int) -> dict:
        """What the losses were trained on: every real token (the discriminator's targets),
        and in expectation `mask_probability` of them for the generator."""
        return {"supervised_targets": real_tokens, "target_kind": "real tokens (discriminator)",
                "generator_targets": round(self.mask_probability * real_tokens)}

    def metrics(self, sums: dict) -> dict:
        """Validation metrics: the discriminator's accuracy over every real token beside the
        share of unreplaced tokens (always answering "original"), its recall of the replaced
        ones, its loss; the generator's MLM accuracy and loss with their baselines; val_loss
        the weighted sum trained."""
        count, real = max(1, sums["count"]), max(1, sums["rtd_count"])
        metrics = {"val_rtd_accuracy": sums["rtd_correct"] / real,
                   "val_rtd_baseline_accuracy": 1.0 - sums["rtd_replaced"] / real,
                   "val_rtd_replaced_recall": sums["rtd_replaced_found"] / max(1, sums["rtd_replaced"]),
                   "val_rtd_loss": sums["rtd_loss_sum"] / real,
                   "val_mlm_loss": sums["loss_sum"] / count, "val_mlm_accuracy": sums["mlm_correct"] / count}
        if "rtd_uniform_replaced" in sums:  # the curriculum: recall on each kind of replacement
            sampled = sums["rtd_replaced"] - sums["rtd_uniform_replaced"]
            metrics["val_rtd_uniform_recall"] = sums["rtd_uniform_found"] / max(1, sums["rtd_uniform_replaced"])
            metrics["val_rtd_generator_recall"] = (sums["rtd_replaced_found"] - sums["rtd_uniform_found"]) / max(1, sampled)
            metrics["val_rtd_uniform_share"] = self.uniform_end
        metrics["val_loss"] = metrics["val_mlm_loss"] + self.discriminator_weight * metrics["val_rtd_loss"]
        if "baseline_correct" in sums:
            metrics["val_mlm_baseline_accuracy"] = sums["baseline_correct"] / count
            metrics["val_mlm_unigram_loss"] = sums["unigram_nll_sum"] / count
        return metrics
