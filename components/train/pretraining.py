"""Pretraining: memory-mapped tokenized data, the objectives' batches, losses and validation
metrics with their trivial baselines (which objective uses which is in its spec,
components.objectives), and `pretrain`, which drives the shared loop (components.train.loop)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from components.config import PretrainConfig
from components.train.checkpoint import Checkpointer
from components.train.collators import IGNORE_INDEX, mask_tokens
from components.train.losses import linear_cross_entropy, top1
from components.train.loop import autocast, fit, resolve_device, resolve_device_dtype
from components.train.models import fast_cpu_attention
from components.train.precision import training_probe


class PretrainData:
    """Memory-mapped tokenized split (from components.tokens.tokenization) served as batches."""

    def __init__(self, data_dir: Path, split: str):
        data_dir = Path(data_dir)
        meta_path = data_dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{data_dir}: no tokenized data; run the tokenize stage first")
        self.meta = json.loads(meta_path.read_text())
        self.arrays = {
            p.name.split(".")[1]: np.load(p, mmap_mode="r") for p in sorted(data_dir.glob(f"{split}.*.npy"))
        }
        self.n = len(self.arrays["input_ids"])
        self.split = split

    def batch(self, indices: np.ndarray, device: torch.device) -> dict:
        idx = np.sort(indices)  # sorted reads are friendlier to the page cache
        out = {name: torch.from_numpy(np.asarray(arr[idx], dtype=np.int64)) for name, arr in self.arrays.items()}
        if device.type == "cuda":
            # From pinned memory the copy is asynchronous: a pageable one waits for the GPU
            # to drain its queue first, every batch.
            return {name: t.pin_memory().to(device, non_blocking=True) for name, t in out.items()}
        return {name: t.to(device) for name, t in out.items()}


def token_counts(data: PretrainData, vocab_size: int, excluded: Sequence[int] = (),
                 chunk_tokens: int = 1 << 22) -> np.ndarray:
    """How often each token id occurs in `data`'s input_ids (`excluded` ids set to 0).

    Counted in chunks of rows: np.bincount widens uint16 to int64, so a whole split at once
    would cost 4x its size in memory; a chunk costs 32 MB."""
    ids = data.arrays["input_ids"]
    rows = max(1, chunk_tokens // max(1, ids.shape[1]))
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(ids), rows):
        chunk = np.bincount(np.asarray(ids[start:start + rows]).reshape(-1), minlength=vocab_size)
        if len(chunk) > vocab_size:
            raise ValueError(f"{data.split}.input_ids.npy: token id {len(chunk) - 1} is outside the "
                             f"{vocab_size}-token vocabulary of meta.json; re-run the tokenize stage")
        counts += chunk
    counts[list(excluded)] = 0
    return counts


class TokenBaseline:
    """The trivial baselines of the token metrics, from the train split's token counts:
    always predicting the most frequent token (what an accuracy must beat), and a unigram
    model, the counts with add-one smoothing over the vocabulary (the cross-entropy of a
    model that ignores context: the plateau a masked model sits on until it uses context).

    Counted at pretrain start rather than at tokenize time: one bincount over the
    memory-mapped train split takes well under a second at the demo size, and the tokenized
    data (and so every cached tokenize output and checkpoint fingerprint) stays as it was."""

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, dtype=np.float64)
        self.most_frequent = int(counts.argmax())
        self.log_probs = torch.from_numpy(np.log((counts + 1.0) / (counts.sum() + len(counts))))

    @classmethod
    def of(cls, data: PretrainData, excluded: Sequence[int] = ()) -> "TokenBaseline":
        return cls(token_counts(data, int(data.meta["vocab_size"]), excluded))

    def sums(self, targets: torch.Tensor) -> dict:
        """Summed over `targets` (the positions a model is scored on): the most-frequent
        guesses that are right, and the unigram model's negative log-likelihood (nats)."""
        targets = targets.reshape(-1).cpu()
        return {"baseline_correct": int((targets == self.most_frequent).sum()),
                "unigram_nll_sum": float(-self.log_probs[targets].sum())}


class CausalLMTraining:
    """Next-token prediction (GPT-2): batches are the blocks as they are; every position
    predicts the token after it.

    A block packs several documents joined by EOS. With `eos_id` None a token attends to
    every earlier token of its block, across document boundaries (GPT-2's and most packed
    pretraining's choice: no mask to build, the fused causal kernel). With `eos_id` set it
    attends only within its own document (a block-diagonal causal mask; an EOS belongs to
    the document it closes); positions still count from the block's start."""

    baseline_excluded: tuple[int, ...] = ()
    """Token ids the unigram baseline never counts: none, every token (EOS too) is a target."""

    def __init__(self, eos_id: int | None = None):
        self.eos_id = eos_id

    def attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The (batch, 1, T, T) boolean mask (True = may attend) of within-document
        attention; None for cross-document attention (the model's own causal mask)."""
        if self.eos_id is None:
            return None
        closes = input_ids == self.eos_id
        document = closes.cumsum(1) - closes.long()
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        return ((document[:, :, None] == document[:, None, :]) & causal)[:, None]

    def prepare(self, raw: dict, generator: torch.Generator, progress: float = 1.0) -> dict:
        return {"input_ids": raw["input_ids"]}

    def loss_denominators(self, batch: dict, world_size: int) -> dict:
        """Every rank predicts the same number of tokens, so the mean of the ranks' means
        DDP forms is already the global mean: nothing to add."""
        return {}

    def forward(self, model, batch: dict) -> dict:
        """Loss plus the counts evaluation needs (sums, so batches add up)."""
        # Next-token loss with the head fused into it (components/train/losses.py): the same
        # number transformers' labels= path gives, without its full fp32 logits.
        # No key/value cache (GPT-2's config asks for one; filling it copies K and V per layer).
        mask = self.attention_mask(batch["input_ids"])
        if mask is None:
            hidden = model.transformer(input_ids=batch["input_ids"], use_cache=False)[0][:, :-1]
        else:
            hidden = model.transformer(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)[0][:, :-1]
        targets = batch["input_ids"][:, 1:].reshape(-1)
        loss = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets)
        n = targets.numel()
        return {"loss": loss, "loss_sum": loss.detach() * n, "count": n}

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The training loss alone (`forward`'s, whose head is fused into it already)."""
        return self.forward(model, batch)["loss"]

    def baseline_sums(self, batch: dict, baseline: TokenBaseline) -> dict:
        """The baselines' sums over exactly the targets `forward` scores."""
        return baseline.sums(batch["input_ids"][:, 1:])

    def supervised_targets(self, rows: int, block_size: int, real_tokens: int) -> dict:
        """What the loss was trained on: every next token of every row (the loss counts them all)."""
        return {"supervised_targets": rows * (block_size - 1), "target_kind": "predicted tokens"}

    def metrics(self, sums: dict) -> dict:
        """Validation metrics from the summed `forward` (and `baseline_sums`) counts."""
        val_loss = sums["loss_sum"] / max(1, sums["count"])
        metrics = {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}
        if "unigram_nll_sum" in sums:
            metrics["val_unigram_perplexity"] = math.exp(min(sums["unigram_nll_sum"] / max(1, sums["count"]), 50.0))
        return metrics


class MaskedLMTraining:
    """Masked-token prediction (BERT): dynamic 80/10/10 masking per batch, optionally of
    whole words; with `next_sentence`, BERT's sentence pairs and the NSP loss on top."""

    def __init__(self, tokenizer, mlm_probability: float, whole_word_masking: bool = False,
                 next_sentence: bool = False):
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.next_sentence = next_sentence
        self.vocab_size = len(tokenizer)
        # mask id first: mask_tokens takes it from there.
        self.special_ids = [tokenizer.mask_token_id, *sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id})]
        self.pad_id = tokenizer.pad_token_id
        # Never a target (mask_tokens never chooses them), so never the baseline's guess.
        self.baseline_excluded = tuple(self.special_ids)

    def prepare(self, raw: dict, generator: torch.Generator, progress: float = 1.0) -> dict:
        word_starts = None
        if self.whole_word_masking:
            if "word_starts" not in raw:
                raise ValueError("pretrain.whole_word_masking: the tokenized data has no word_starts array; "
                                 "re-run the tokenize stage")
            word_starts = raw["word_starts"]
        inputs, labels = mask_tokens(raw["input_ids"], self.special_ids, self.vocab_size, self.mlm_probability,
                                     generator, word_starts)
        batch = {"input_ids": inputs, "labels": labels, "attention_mask": (raw["input_ids"] != self.pad_id).long()}
        if self.next_sentence:
            batch["token_type_ids"] = raw["token_type_ids"]
            batch["nsp_labels"] = raw["nsp_labels"]
        return batch

    def loss_denominators(self, batch: dict, world_size: int) -> dict:
        """Under DDP, what each rank divides its summed losses by, from the global batch: the
        global count over the world size. DDP averages the ranks' gradients, so they add up
        to the gradient of the global mean, the single-process one; dividing by a rank's own
        masked count would average means of unequal counts instead."""
        device = batch["labels"].device
        masked = max(1, int((batch["labels"] != IGNORE_INDEX).sum()))
        out = {"mlm_denominator": torch.tensor(masked / world_size, device=device)}
        if self.next_sentence:
            out["nsp_denominator"] = torch.tensor(len(batch["nsp_labels"]) / world_size, device=device)
        return out

    def forward(self, model, batch: dict) -> dict:
        """Loss plus the counts evaluation needs. The vocabulary head runs only on masked
        positions (as MosaicBERT and Cramming do): ~3x fewer head FLOPs at 30%."""
        bert_out, chosen, targets = self._encode(model, batch)
        # BertForPreTraining holds the MLM head next to the NSP one; BertForMaskedLM's `cls` holds it alone.
        logits = model.cls.predictions(bert_out[0][chosen])
        # Sum over count, not mean: a batch that drew no masked token scores 0, not NaN.
        mlm_loss = F.cross_entropy(logits.float(), targets, reduction="sum") / batch.get(
            "mlm_denominator", max(1, targets.numel()))
        result = {
            "loss": mlm_loss,
            "loss_sum": mlm_loss.detach() * targets.numel(),
            "count": targets.numel(),
            "mlm_correct": (top1(logits) == targets).sum(),
        }
        if self.next_sentence:
            nsp_loss, nsp_logits = self._next_sentence(model, bert_out, batch)
            result["loss"] = mlm_loss + nsp_loss
            result["nsp_loss_sum"] = nsp_loss.detach() * len(nsp_logits)
            result["nsp_correct"] = (top1(nsp_logits) == batch["nsp_labels"]).sum()
            result["nsp_count"] = len(nsp_logits)
        return result

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The training loss alone: `forward`'s, with the vocabulary head's last matmul fused
        into its cross-entropy as CLM's is (components/train/losses.py: no fp32 logits kept, no
        log-softmax or its backward) and none of the counts evaluation needs."""
        bert_out, chosen, targets = self._encode(model, batch)
        head = model.cls.predictions
        loss = linear_cross_entropy(head.transform(bert_out[0][chosen]), head.decoder.weight, targets,
                                    bias=head.decoder.bias, denominator=batch.get("mlm_denominator"))
        if self.next_sentence:
            loss = loss + self._next_sentence(model, bert_out, batch)[0]
        return loss

    def _encode(self, model, batch: dict):
        """The encoder's outputs, which positions were masked, and their targets."""
        bert_out = model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
        )
        chosen = batch["labels"] != IGNORE_INDEX
        return bert_out, chosen, batch["labels"][chosen]

    def _next_sentence(self, model, bert_out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """NSP's loss (over the DDP denominator where one is set) and logits."""
        nsp_logits = model.cls.seq_relationship(bert_out[1])
        if "nsp_denominator" in batch:
            nsp_loss = F.cross_entropy(nsp_logits.float(), batch["nsp_labels"], reduction="sum") / batch["nsp_denominator"]
        else:
            nsp_loss = F.cross_entropy(nsp_logits.float(), batch["nsp_labels"])
        return nsp_loss, nsp_logits

    def supervised_targets(self, rows: int, block_size: int, real_tokens: int) -> dict:
        """What the loss was trained on: the masked positions, in expectation mlm_probability of the
        non-pad tokens (specials, never masked, included: a slight overcount), plus one NSP label per pair."""
        out = {"supervised_targets": round(self.mlm_probability * real_tokens), "target_kind": "masked positions (expected)"}
        if self.next_sentence:
            out["nsp_pairs"] = rows
        return out

    def baseline_sums(self, batch: dict, baseline: TokenBaseline) -> dict:
        """The baselines' sums over the positions `forward` scores: the masked ones, whose
        target is the original token whatever the 80/10/10 draw put in the input; with
        NSP, the NotNext pairs (the majority class's share is the trivial NSP accuracy)."""
        labels = batch["labels"]
        out = baseline.sums(labels[labels != IGNORE_INDEX])
        if self.next_sentence:
            out["nsp_not_next"] = int(batch["nsp_labels"].sum())
        return out

    def metrics(self, sums: dict) -> dict:
        """Validation metrics from the summed `forward` (and `baseline_sums`) counts
        (val_loss includes NSP's; val_mlm_loss is the masked tokens' alone)."""
        count = max(1, sums["count"])
        metrics = {"val_loss": sums["loss_sum"] / count, "val_mlm_loss": sums["loss_sum"] / count,
                   "val_mlm_accuracy": sums["mlm_correct"] / count}
        if "baseline_correct" in sums:
            metrics["val_mlm_baseline_accuracy"] = sums["baseline_correct"] / count
            metrics["val_mlm_unigram_loss"] = sums["unigram_nll_sum"] / count
        if self.next_sentence:
            pairs = max(1, sums["nsp_count"])
            metrics["val_nsp_accuracy"] = sums["nsp_correct"] / pairs
            metrics["val_nsp_loss"] = sums["nsp_loss_sum"] / pairs
            metrics["val_loss"] += metrics["val_nsp_loss"]
            if "nsp_not_next" in sums:
                # Not 0.5: one-sentence chunks are always NotNext (as in BERT), so the
                # majority class's share is what always guessing it scores.
                metrics["val_nsp_baseline_accuracy"] = max(sums["nsp_not_next"],
                                                           sums["nsp_count"] - sums["nsp_not_next"]) / pairs
        return metrics


@torch.no_grad()
def evaluate_pretraining(model, training, data: PretrainData, batch_size: int, max_batches: int,
                         seed: int, device: torch.device, dtype: torch.dtype,
                         baseline: TokenBaseline | None = None) -> dict:
    """Validation metrics in bounded memory: only sums and counts are kept per batch.
    `training` is a CausalLMTraining or MaskedLMTraining (an objective spec's `training`).
    With `baseline`, the trivial baselines too, on the same batches and masks."""
    sums: dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)  # same masks at every evaluation
    for b in range(min(max_batches, math.ceil(data.n / batch_size))):
        idx = np.arange(b * batch_size, min(data.n, (b + 1) * batch_size))
        batch = training.prepare(data.batch(idx, device), generator)
        with autocast(device, dtype):
            out = training.forward(model, batch)
        if baseline is not None:
            out.update(training.baseline_sums(batch, baseline))
        for k, v in out.items():
            if k != "loss":
                sums[k] = sums.get(k, 0.0) + float(v)
    return training.metrics(sums)


class _Trainable(torch.nn.Module):
    """Model + objective as one module, so DDP sees the loss computation as its forward
    (the MLM path calls submodules, which DDP's gradient sync would otherwise not see)."""

    def __init__(self, model: torch.nn.Module, training):
        super().__init__()
        self.inner = model
        self.training_objective = training

    def forward(self, batch: dict) -> torch.Tensor:
        return self.training_objective.loss(self.inner, batch)


def _rows(training, batch: dict, rank: int, world_size: int) -> dict:
    """This rank's share of a global batch: every world_size-th row, equal for all ranks,
    with the denominators that make its loss a share of the global mean."""
    if world_size == 1:
        return batch
    return {**{k: v[rank::world_size] for k, v in batch.items()}, **training.loss_denominators(batch, world_size)}


def _batches(training, train: PretrainData, cfg: PretrainConfig, seed: int, device: torch.device, rank: int,
             world_size: int) -> Callable[[int, int], dict]:
    """The loop's `next_batch(step, micro)`: a pure function of the step, so resuming is O(1)."""
    # Sample order: a fresh permutation per epoch, so step s maps to examples in O(1).
    epochs: dict[int, np.ndarray] = {}

    def next_batch(step: int, micro: int) -> dict:
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        idx = []
        for pos in range(first, first + cfg.batch_size):
            epoch, offset = divmod(pos, train.n)
            if epoch not in epochs:
                epochs[epoch] = np.random.default_rng([seed, epoch]).permutation(train.n)
            idx.append(epochs[epoch][offset])
        # Masks are drawn for the whole global batch, then sliced: every world size sees
        # exactly the inputs a single process would.
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + micro)
        # progress (0 at the first step, 1 at the last) drives a curriculum (rtd's); validation uses 1.
        progress = step / max(1, cfg.max_steps - 1)
        return _rows(training, training.prepare(train.batch(np.asarray(idx), device), generator, progress), rank,
                     world_size)

    return next_batch


def _precision(cfg: PretrainConfig, bare: _Trainable, next_batch, device: torch.device,
               rank: int) -> tuple[torch.dtype, dict]:
    """The run's precision and how it was chosen (`precision_*`, for the reports and MLflow).

    `dtype: auto` on CPU times the real step (`bare`: not DDP-wrapped, so no collective) on
    the first batch, on rank 0 only; every rank takes rank 0's choice."""
    from components.train import distributed

    probe = None
    if cfg.dtype == "auto" and device.type == "cpu" and rank == 0:
        probe = training_probe(bare, next_batch(0, 0), lambda m, b: m(b), device,
                               lambda dtype: fast_cpu_attention(bare, device, dtype), shape_model=bare.inner)
    _, dtype = resolve_device_dtype(str(device), cfg.dtype, probe)
    if cfg.dtype == "auto" and device.type == "cpu":
        dtype = distributed.gather_objects(dtype)[0]
    record = probe.record if probe is not None else {}
    return dtype, {"precision_source": record.get("source", f"pretrain.dtype {cfg.dtype} on {device.type}"),
                   **({"precision_bf16_speedup": record["bf16_speedup"]} if record else {})}


def pretrain(training, model, data_dir: Path, cfg: PretrainConfig, seed: int,
             on_log: Callable[[int, dict], None] | None = None, checkpointer: Checkpointer | None = None) -> dict:
    """Pretrain `model` on the tokenized data, its batches and loss made by `training` (an
    objective spec's `training(tokenizer, cfg)`); returns final validation metrics and timing.

    Under torchrun each rank takes an equal slice of the same global batch (so no rank
    runs out of data before another) and divides its loss by the global counts, DDP
    averages gradients (so they equal one process's), each rank draws its own dropout
    masks, the logged loss is the mean over ranks, and only rank 0 evaluates, logs and
    checkpoints (with every rank's RNG state).
    """
    from components.train import distributed

    torch.manual_seed(seed)
    rank, world_size, device = distributed.setup(resolve_device(cfg.device))
    if cfg.batch_size % world_size:
        raise ValueError(f"pretrain.batch_size ({cfg.batch_size}) must be divisible by the {world_size} processes")
    model.to(device)
    trainable = distributed.wrap(_Trainable(model, training), device)
    # After the model is built (identically on every rank; DDP broadcast rank 0's weights
    # anyway): each rank its own dropout stream, rank 0 the single-process one.
    distributed.seed_rank(seed, rank)
    if cfg.compile:
        trainable = torch.compile(trainable)
    train, val = PretrainData(data_dir, "train"), PretrainData(data_dir, "validation")
    baseline = TokenBaseline.of(train, training.baseline_excluded) if rank == 0 else None
    next_batch = _batches(training, train, cfg, seed, device, rank, world_size)
    dtype, chosen = _precision(cfg, _Trainable(model, training), next_batch, device, rank)
    cfg = dataclasses.replace(cfg, dtype=str(dtype).removeprefix("torch."))  # what fit runs
    state: dict = {"history": [], "curve": []}

    def log(step: int, metrics: dict) -> None:
        if "train_loss" in metrics:
            state["curve"].append([step, metrics["train_loss"]])
        if on_log and rank == 0:
            on_log(step, metrics)

    def evaluate(step: int) -> bool:
        if rank == 0:
            metrics = evaluate_pretraining(model, training, val, cfg.batch_size, cfg.eval_batches, seed, device, dtype,
                                           baseline)
            state["history"].append({"step": step, **metrics})
            log(step, metrics)
        return False

    try:
        timing = fit(trainable, cfg, cfg.max_steps, next_batch, lambda m, b: m(b),
                     evaluate=evaluate, eval_every=cfg.eval_every, on_log=log, log_every=cfg.log_every,
                     checkpointer=checkpointer, state=state)
        distributed.barrier()
    finally:
        del trainable  # DDP first, then the process group: distributed.teardown says why
        distributed.teardown()
    final = state["history"][-1] if state["history"] else {}
    return {**{k: v for k, v in final.items() if k != "step"}, **timing,
            "tokens_per_s": timing["tokens"] * world_size / max(timing["seconds"], 1e-9),
            "world_size": world_size, "device": str(device), "dtype": cfg.dtype, **chosen,
            "curve": state["curve"], "history": state["history"]}
