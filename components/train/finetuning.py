"""Fine-tuning a sequence classifier on the downstream task, through the shared `fit` loop,
and the finetune stage's work around it (`finetune_run`)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components import paths
from components.io import atomic_dir, read_json, write_json_atomic
from components.tokens.tokenization import load_tokenizer
from components.config import FinetuneConfig
from components.train.loop import autocast, fit, resolve_device, resolve_device_dtype
from components.train.models import fast_cpu_attention, fast_cpu_dropout, fp32_head
from components.train.precision import training_probe
from components.train.scores import macro_f1
from components.train.unpad import classifier_logits


def read_labelled(path: Path, labels: list[str]) -> pd.DataFrame:
    """A downstream split with `text` and integer `label` columns, checked against the label set."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: missing; run the ingest stage first")
    frame = pd.read_parquet(path)
    for column in ("text", "label"):
        if column not in frame.columns:
            raise ValueError(f"{path}: no '{column}' column; expected columns text and label")
    bad = frame[frame["label"].isna() | ~frame["label"].isin(range(len(labels)))]
    if len(bad):
        raise ValueError(
            f"{path}: row {bad.index[0]} has label {bad['label'].tolist()[0]!r} outside the {len(labels)} "
            f"labels in labels.json; fix the data or the label set"
        )
    return frame.reset_index(drop=True)


def append_eos(tokenizer):
    """Make the tokenizer append EOS to every text (and pair), as GPT-2's classifier needs:
    it reads the last non-pad token, and training, evaluation and the served pipeline must
    encode a text identically."""
    from tokenizers import processors

    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    return tokenizer


def encode_for_classifier(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """A classifier's input ids per text, truncated to `max_length` including the special tokens."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def collate(encoded: list[list[int]], pad_id: int, device: torch.device) -> dict:
    """Right-pad to the longest sequence in the batch."""
    width = max(len(x) for x in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    for i, x in enumerate(encoded):
        ids[i, : len(x)] = torch.tensor(x)
    return {"input_ids": ids.to(device), "attention_mask": (ids != pad_id).long().to(device)}


@torch.no_grad()
def predict(model, encoded: list[list[int]], pad_id: int, batch_size: int, device, dtype,
            head: Sequence[str] = ()) -> np.ndarray:
    """Class probabilities for each encoded text, batch by batch (sorted by length for speed).

    `head` (the architecture's `classifier_head`) runs in fp32, as in fine-tuning."""
    model.eval()
    order = np.argsort([len(x) for x in encoded], kind="stable")
    probs = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    with fp32_head(model, head, device, dtype):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([encoded[i] for i in idx], pad_id, device)
            with autocast(device, dtype):
                logits = model(**batch, use_cache=False).logits  # GPT-2 would fill a key/value cache
            probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs


def length_grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                         window_batches: int = 50) -> np.ndarray:
    """One epoch's example order with batches of similar length: shuffled, sorted by length
    within windows of `window_batches` batches, cut into batches that are then shuffled (a
    short last batch stays last, so every other slice of `batch_size` is a whole batch)."""
    perm = rng.permutation(len(lengths))
    window = window_batches * batch_size
    order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                            for chunk in np.split(perm, range(window, len(perm), window))])
    batches = np.split(order, range(batch_size, len(order), batch_size))
    whole = [b for b in batches if len(b) == batch_size]
    rest = [b for b in batches if len(b) < batch_size]
    return np.concatenate([whole[i] for i in rng.permutation(len(whole))] + rest)


def class_weights(labels: np.ndarray, n_labels: int, device) -> torch.Tensor:
    """Inverse class frequency, so every class weighs the same in the loss (the built-in task is imbalanced)."""
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    return torch.tensor(counts.sum() / (n_labels * np.maximum(counts, 1.0)), dtype=torch.float32, device=device)


def _batches(train_x: list[list[int]], train_y: torch.Tensor, cfg: FinetuneConfig, seed: int, pad_id: int,
             device) -> tuple[Callable[[int, int], dict], int]:
    """The loop's `next_batch(step, micro)` over the training examples, a fresh order each
    epoch (seeded by `seed` and the epoch; by length when `group_by_length`), and the steps
    per epoch."""
    steps_per_epoch = math.ceil(len(train_x) / (cfg.batch_size * cfg.grad_accum))
    lengths = np.array([len(x) for x in train_x])
    orders: dict[int, np.ndarray] = {}

    def next_batch(step: int, micro: int) -> dict:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in orders:
            rng = np.random.default_rng([seed, epoch])
            orders[epoch] = (length_grouped_order(lengths, cfg.batch_size, rng) if cfg.group_by_length
                             else rng.permutation(len(train_x)))
        start = (pos * cfg.grad_accum + micro) * cfg.batch_size
        idx = orders[epoch][start : start + cfg.batch_size]
        if len(idx) == 0:  # last step of an epoch with grad_accum: reuse the epoch's head
            idx = orders[epoch][: cfg.batch_size]
        batch = collate([train_x[i] for i in idx], pad_id, device)
        batch["labels"] = train_y[idx].to(device)
        return batch

    return next_batch, steps_per_epoch


@dataclasses.dataclass(frozen=True)
class TrainingStep:
    """What one fine-tuning step runs: `next_batch(step, micro)` for `fit` and the loss."""
    next_batch: Callable[[int, int], dict]
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
    steps_per_epoch: int
    n_examples: int


def training_step(tokenizer, train: pd.DataFrame, n_labels: int, cfg: FinetuneConfig, seed: int,
                  device, unpadded: Callable | None = None) -> TrainingStep:
    """The training examples encoded and batched (by length, a fresh order each epoch) and the
    class-weighted cross-entropy: fine-tuning's step, which `benchmarks/train.py` times too.
    `unpadded`: the architecture's `unpadded_logits`, run with `finetune.unpad` (without it,
    the padded forward)."""
    train_x = encode_for_classifier(tokenizer, train["text"].tolist(), cfg.max_length)
    train_y = torch.tensor(train["label"].to_numpy(), dtype=torch.long)
    weights = class_weights(train_y.numpy(), n_labels, device) if cfg.class_weighting else None
    next_batch, steps_per_epoch = _batches(train_x, train_y, cfg, seed, tokenizer.pad_token_id, device)

    def loss_fn(m, batch):
        logits = (classifier_logits(m, batch, unpadded, cfg.fast_cpu_dropout) if cfg.unpad and unpadded else
                  m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits)
        return F.cross_entropy(logits.float(), batch["labels"], weight=weights)

    return TrainingStep(next_batch, loss_fn, steps_per_epoch, len(train_x))


def finetune(model, tokenizer, train: pd.DataFrame, val: pd.DataFrame, n_labels: int,
             cfg: FinetuneConfig, seed: int, on_log=None, head: Sequence[str] = (),
             unpadded: Callable | None = None) -> dict:
    """Fine-tune with early stopping on validation macro-F1; the best epoch's weights are kept.

    `tokenizer` must have been through its architecture's `prepare_classifier_tokenizer`;
    `head` (its `classifier_head`) trains and predicts in fp32 under bf16 autocast; with
    `finetune.unpad`, `unpadded` (its `unpadded_logits`) trains on real tokens only."""
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    model.to(device)
    pad_id = tokenizer.pad_token_id
    val_x = encode_for_classifier(tokenizer, val["text"].tolist(), cfg.max_length)
    val_y = val["label"].to_numpy()
    step = training_step(tokenizer, train, n_labels, cfg, seed, device, unpadded)
    next_batch, loss_fn, steps_per_epoch = step.next_batch, step.loss_fn, step.steps_per_epoch

    # dtype auto on CPU: the faster precision, timed on this run's own first step.
    probe = (precision_probe(model, step, head, device, cfg.fast_cpu_dropout)
             if cfg.dtype == "auto" and device.type == "cpu" else None)
    _, dtype = resolve_device_dtype(str(device), cfg.dtype, probe)
    cfg = dataclasses.replace(cfg, dtype=str(dtype).removeprefix("torch."))  # what fit runs
    chosen = {"dtype": cfg.dtype, "precision_source": probe.record["source"] if probe else f"finetune.dtype on {device.type}",
              **({"precision_bf16_speedup": probe.record["bf16_speedup"]} if probe else {})}
    best = {"val_macro_f1": -1.0, "epoch": 0, "step": 0, "evals": 0, "state": None}
    history: list[dict] = []
    total_steps, eval_every = finetune_steps(step.n_examples, cfg)

    def evaluate(step: int) -> bool:
        epoch = step / steps_per_epoch
        epoch = int(epoch) if epoch.is_integer() else round(epoch, 2)
        preds = predict(model, val_x, pad_id, cfg.batch_size * 2, device, dtype).argmax(-1)
        score = macro_f1(val_y, preds, n_labels)
        acc = float(np.mean(preds == val_y))
        history.append({"step": step, "epoch": epoch, "val_macro_f1": score, "val_accuracy": acc})
        if on_log:
            on_log(step, {"val_macro_f1": score, "val_accuracy": acc})
        if score > best["val_macro_f1"]:
            best.update(val_macro_f1=score, val_accuracy=acc, epoch=epoch, step=step, evals=len(history),
                        state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        return len(history) - best["evals"] >= cfg.patience

    with fp32_head(model, head, device, dtype):
        timing = fit(model, cfg, total_steps, next_batch, loss_fn, evaluate=evaluate,
                     eval_every=eval_every, on_log=on_log, log_every=max(1, eval_every // 4))
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "best_step": best["step"], "val_macro_f1": best["val_macro_f1"],
            "val_accuracy": best["val_accuracy"], "epochs_run": history[-1]["epoch"],
            "steps_run": history[-1]["step"], "seconds": timing["seconds"], **chosen, "history": history}


def finetune_steps(n_examples: int, cfg: FinetuneConfig) -> tuple[int, int]:
    """(the step cap, steps between evaluations) for `n_examples` labelled examples: `epochs`
    passes, or `max_steps` when that is fewer; an evaluation each epoch or `eval_every` steps."""
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    return total, min(total, cfg.eval_every or steps_per_epoch)


def precision_probe(model, step: TrainingStep, head: Sequence[str], device, fast_dropout: bool = False):
    """dtype auto's Probe: this run's first batch, timed as `fit` runs it (fp32 head, CPU
    attention and, with `finetune.fast_cpu_dropout`, the cheaper dropout)."""
    return training_probe(model, step.next_batch(0, 0), step.loss_fn, device,
                          lambda dtype: _precision_helpers(model, head, device, dtype, fast_dropout))


@contextlib.contextmanager
def _precision_helpers(model, head: Sequence[str], device, dtype, fast_dropout: bool):
    """What a fine-tuning step runs inside: the fp32 head and `fit`'s CPU attention and dropout."""
    with fp32_head(model, head, device, dtype), fast_cpu_attention(model, device, dtype), \
            (fast_cpu_dropout(model, device) if fast_dropout else contextlib.nullcontext()):
        yield


def finetune_seeds(seed: int, cfg: FinetuneConfig) -> list[int]:
    """The fine-tuning seeds: `seed`, `seed + 1`, ... `finetune.seeds` of them, the same for every run."""
    return [seed + i for i in range(cfg.seeds)]


def _run_inputs(run, model_cfg, cfg: FinetuneConfig):
    """(pretrained dir or None, classifier tokenizer, labels, train, validation), checked."""
    pretrained = run.pretrained_dir()
    if pretrained is not None and not (pretrained / "config.json").exists():
        raise FileNotFoundError(f"{pretrained}: no pretrained model; run the pretrain stage first")
    tokenizer = run.architecture.prepare_classifier_tokenizer(load_tokenizer(run.tokenizer_dir()), cfg.max_length)
    downstream = Path(paths.DOWNSTREAM_DIR)
    labels = read_json(downstream / "labels.json")["labels"]
    train = read_labelled(downstream / "train.parquet", labels)
    val = read_labelled(downstream / "validation.parquet", labels)
    if cfg.max_length > model_cfg.max_positions:
        raise ValueError(f"finetune.max_length ({cfg.max_length}) exceeds model.max_positions "
                         f"({model_cfg.max_positions})")
    return pretrained, tokenizer, labels, train, val


def finetune_run(run, model_cfg, cfg: FinetuneConfig, seed: int, track: Callable[[], ContextManager],
                 log_metrics: Callable[..., None]) -> dict:
    """The finetune stage: `run` (a FinetuneRun spec from components.objectives: a pretrained
    objective's model or its architecture's scratch twin) fine-tuned on the downstream task.

    The search is the same for every run: each lr of `finetune.lr_grid` with the first seed,
    the lr with the best validation macro-F1 kept (the first listed wins a tie), then the
    other seeds at that lr; only the train and validation splits are read. Saved to
    models/finetuned/<run>/seed-<s>/ (every seed's classifier: evaluate scores them all)
    with selection.json (the grid's validation scores and the primary model: the first seed,
    which the registry serves), and reports/finetune/<run>.json (per lr and per seed).
    One process for all of it: the imports are paid once.

    The inputs are checked before `track()` opens the run that `log_metrics(metrics, step=None)`
    reports to (the stage's MLflow run).
    """
    pretrained, tokenizer, labels, train, val = _run_inputs(run, model_cfg, cfg)
    seeds, rates = finetune_seeds(seed, cfg), cfg.learning_rates

    def fit_one(lr: float, s: int):
        torch.manual_seed(s)
        model = run.architecture.build_classifier(model_cfg, tokenizer, labels, pretrained)

        def on_log(step: int, metrics: dict) -> None:
            log_metrics({f"lr{lr:g}_seed{s}_{k}": v for k, v in metrics.items()}, step=step)
            print(f"finetune {run.name} lr {lr:g} seed {s} step {step} "
                  + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr, flush=True)

        result = finetune(model, tokenizer, train, val, len(labels), replace(cfg, lr=lr), s, on_log,
                          head=run.architecture.classifier_head, unpadded=run.architecture.unpadded_logits)
        return model, {"lr": lr, "seed": s, **result}

    with track():
        with atomic_dir(paths.finetuned_dir(run.name)) as tmp:
            grid, best = [], None
            for lr in rates:
                model, result = fit_one(lr, seeds[0])
                grid.append(result)
                if best is None or result["val_macro_f1"] > best[1]["val_macro_f1"]:  # a tie keeps the earlier lr
                    best = (model, result)
            best_model, chosen = best
            per_seed = [chosen]
            _save(best_model, tokenizer, tmp / f"seed-{seeds[0]}")
            del best_model, best
            for s in seeds[1:]:
                model, result = fit_one(chosen["lr"], s)
                per_seed.append(result)
                _save(model, tokenizer, tmp / f"seed-{s}")
            selection = {"run": run.name, "primary": f"seed-{seeds[0]}", "primary_seed": seeds[0], "seeds": seeds,
                         "chosen_lr": chosen["lr"], "lr_grid": list(rates), "selected_on": "validation macro-F1",
                         # no wall times: the directory is a DVC out, equal for equal inputs
                         "grid": [{k: v for k, v in _brief(r).items() if k != "seconds"} for r in grid]}
            write_json_atomic(tmp / "selection.json", selection)
        report = _run_report(run, selection, grid, per_seed)
        write_json_atomic(Path(paths.FINETUNE_REPORTS) / f"{run.name}.json", report)
        log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return report


def _run_report(run, selection: dict, grid: list[dict], per_seed: list[dict]) -> dict:
    """reports/finetune/<run>.json: the grid, every seed, and the chosen lr's first-seed scores."""
    chosen, val_scores = per_seed[0], [r["val_macro_f1"] for r in per_seed]
    return {"run": run.name, "architecture": run.architecture.name, "pretrained": run.pretrained,
            **{k: v for k, v in selection.items() if k not in ("run", "grid")},
            "val_macro_f1": chosen["val_macro_f1"], "val_accuracy": chosen["val_accuracy"],
            "best_epoch": chosen["best_epoch"], "val_macro_f1_seed_mean": float(np.mean(val_scores)),
            "val_macro_f1_seed_std": float(np.std(val_scores, ddof=1)) if len(val_scores) > 1 else 0.0,
            "seconds": sum(r["seconds"] for r in grid + per_seed[1:]),
            "grid": [_brief(r) for r in grid], "per_seed": [_brief(r) for r in per_seed]}


def _save(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _brief(result: dict) -> dict:
    """A fit's validation results without its weights (the history stays: one row per epoch)."""
    return {k: result[k] for k in ("lr", "seed", "val_macro_f1", "val_accuracy", "best_epoch", "best_step",
                                   "epochs_run", "steps_run", "seconds", "history")}
