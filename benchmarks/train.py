"""Training-loop benchmark: transformers' Trainer vs lmforge's `fit`, bf16 vs fp32, and
what `dtype: auto` picks here against fp32 (`auto_vs_fp32`: 1.0 when it picks fp32; below 1.0
it picked the slower one).

Both sides get the same demo-size model config, the same packed data (the built-in corpus,
tokenized by our stages' code), batch size, sequence length, optimiser steps, threads,
precision and compile setting; all printed. CLM and MLM, three repetitions each; medians.
The last line is one JSON object.

    python -m benchmarks.train [--steps 40] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from components.config import DataConfig, DownstreamConfig
from components.data.corpus import build_corpus
from components.objectives import ARCHITECTURES, OBJECTIVES
from components.config import ModelConfig
from components.config import TokenizeConfig, TokenizerConfig
from components.tokens.tokenization import iter_texts, load_tokenizer, tokenize_corpus
from components.train.loop import fit, resolve_device_dtype
from components.train.models import fast_cpu_attention
from components.train.precision import CACHE_ENV, training_probe
from components.config import PretrainConfig
from components.train.pretraining import PretrainData, _Trainable

WARMUP = 5
"""Steps left out of the timing on every side (see steady_tokens_per_s)."""
LOSS_TOLERANCE = 0.02
"""bf16 vs fp32: relative gap of the mean training loss over the last 10 steps."""


def prepare_data(work: Path) -> dict[str, tuple]:
    """Corpus -> tokenizers -> packed blocks, with the pipeline's own components."""
    build_corpus(DataConfig(), DownstreamConfig(), 1337, work / "corpus", work / "downstream")
    texts = {s: list(iter_texts(work / "corpus" / f"{s}.parquet")) for s in ("train", "validation")}
    out = {}
    for objective in ("clm", "mlm"):
        arch = OBJECTIVES[objective].architecture.name
        ARCHITECTURES[arch].train_tokenizer(iter(texts["train"]), TokenizerConfig(), work / arch)
        tok = load_tokenizer(work / arch)
        tokenize_corpus(OBJECTIVES[objective], tok, texts, TokenizeConfig(), 1337, work / objective)
        out[objective] = (tok, PretrainData(work / objective, "train"))
    return out


def run_ours(objective: str, tok, data: PretrainData, cfg: PretrainConfig, steps: int) -> tuple[float, list[float]]:
    torch.manual_seed(0)
    model = OBJECTIVES[objective].build_model(ModelConfig(), tok)
    obj = OBJECTIVES[objective].training(tok, cfg)
    order = np.random.default_rng(0).permutation(data.n)
    losses: list[float] = []

    def next_batch(step, micro):
        idx = order[(step * cfg.batch_size) % (data.n - cfg.batch_size):][: cfg.batch_size]
        return obj.prepare(data.batch(idx, torch.device("cpu")), torch.Generator().manual_seed(step))

    ends: list[float] = []

    def on_log(step, metrics):
        ends.append(time.perf_counter())
        losses.append(metrics["train_loss"])

    fit(_Trainable(model, obj), cfg, steps, next_batch, lambda m, b: m(b), on_log=on_log, log_every=1)
    return steady_tokens_per_s(ends, cfg.batch_size * data.meta["block_size"]), losses


def probe_auto(objective: str, tok, data: PretrainData, cfg: PretrainConfig) -> dict:
    """What `dtype: auto` picks for this objective's demo step on this machine (measured
    now: the caller points the cache at a fresh directory), and what the probe cost."""
    torch.manual_seed(0)
    model = OBJECTIVES[objective].build_model(ModelConfig(), tok)
    obj = OBJECTIVES[objective].training(tok, cfg)
    trainable = _Trainable(model, obj)
    batch = obj.prepare(data.batch(np.arange(cfg.batch_size), torch.device("cpu")), torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    probe = training_probe(trainable, batch, lambda m, b: m(b), cpu,
                           lambda dtype: fast_cpu_attention(trainable, cpu, dtype), shape_model=model)
    start = time.perf_counter()
    _, dtype = resolve_device_dtype("cpu", "auto", probe)
    return {"dtype": str(dtype).removeprefix("torch."), "bf16_speedup": probe.record["bf16_speedup"],
            "seconds": time.perf_counter() - start}


def steady_tokens_per_s(step_ends: list[float], tokens_per_step: int) -> float:
    """Tokens/s from the median step period (end to end: data, forward, backward, update),
    after WARMUP steps: the first steps pay one-off costs (oneDNN builds its bf16 and fp32
    kernels for each new shape, the allocator grows) that a real run amortises over thousands."""
    periods = np.diff(step_ends[WARMUP - 1:])
    return tokens_per_step / float(np.median(periods))


def run_trainer(objective: str, tok, data: PretrainData, cfg: PretrainConfig, steps: int, work: Path) -> float:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    torch.manual_seed(0)
    model = OBJECTIVES[objective].build_model(ModelConfig(), tok)
    n = steps * cfg.batch_size + cfg.batch_size
    ids = np.asarray(data.arrays["input_ids"][: min(n, data.n)], dtype=np.int64)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})
    collator = DataCollatorForLanguageModeling(tok, mlm=objective == "mlm", mlm_probability=cfg.mlm_probability)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=cfg.batch_size, max_steps=steps,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, lr_scheduler_type="cosine", weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, bf16=cfg.dtype == "bfloat16", use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        optim="adamw_torch", seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[StepTimes()])
    trainer.train()
    return steady_tokens_per_s(ends, cfg.batch_size * ids.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # The config defaults are the demo profile's sizes.
    bf16 = PretrainConfig(dtype="bfloat16", device="cpu")
    fp32 = PretrainConfig(dtype="float32", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare_data(work)
        block = data["clm"][1].meta["block_size"]
        print(f"model {ModelConfig()} | batch {bf16.batch_size} x {block} tokens | {args.steps} steps | "
              f"threads {torch.get_num_threads()} | bf16 autocast on both sides | torch.compile off on both sides | "
              f"tokens/s from the median step period after {WARMUP} warm-up steps")
        os.environ[CACHE_ENV] = str(work / "cache")  # measure now, not a cached choice
        auto = {o: probe_auto(o, *data[o], fp32) for o in ("clm", "mlm")}
        print("dtype auto: " + ", ".join(f"{o} -> {a['dtype']} (probe: bf16 {a['bf16_speedup']:.2f}x fp32, "
                                        f"{a['seconds']:.1f} s)" for o, a in auto.items()), flush=True)
        rows: dict[str, list[float]] = {}
        curves: dict[str, list[float]] = {}
        for rep in range(args.repeats):
            for objective in ("clm", "mlm"):
                tok, arr = data[objective]
                rows.setdefault(f"trainer_{objective}", []).append(run_trainer(objective, tok, arr, bf16, args.steps, work))
                tps, curves[f"ours_{objective}_bf16"] = run_ours(objective, tok, arr, bf16, args.steps)
                rows.setdefault(f"ours_{objective}", []).append(tps)
            for objective in ("clm", "mlm"):
                tps, curves[f"ours_{objective}_fp32"] = run_ours(objective, *data[objective], fp32, args.steps)
                rows.setdefault(f"ours_{objective}_fp32", []).append(tps)
            print(f"repetition {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    # bf16 must train like fp32: the last 10 steps' mean loss, relative gap (tolerance 2%).
    tail = lambda c: float(np.mean(c[-10:]))  # noqa: E731
    gaps = {o: abs(tail(curves[f"ours_{o}_bf16"]) - tail(curves[f"ours_{o}_fp32"])) / tail(curves[f"ours_{o}_fp32"])
            for o in ("clm", "mlm")}
    print(f"\n{'side':<18}{'median tokens/s':>18}")
    for k, v in med.items():
        print(f"{k:<18}{v:>18,.0f}")
    # What `auto` picked, against fp32, measured by the full runs above (the lower of the two).
    auto_vs = {o: med[f"ours_{o}" if a["dtype"] == "bfloat16" else f"ours_{o}_fp32"] / med[f"ours_{o}_fp32"]
               for o, a in auto.items()}
    result = {
        "auto_vs_fp32": min(auto_vs.values()),
        **{f"auto_{o}": a["dtype"] for o, a in auto.items()},
        **{f"auto_vs_fp32_{o}": v for o, v in auto_vs.items()},
        **{f"auto_probe_bf16_speedup_{o}": a["bf16_speedup"] for o, a in auto.items()},
        **{f"auto_probe_seconds_{o}": a["seconds"] for o, a in auto.items()},
        "clm_speedup": med["ours_clm"] / med["trainer_clm"],
        "mlm_speedup": med["ours_mlm"] / med["trainer_mlm"],
        "bf16_vs_fp32": med["ours_clm"] / med["ours_clm_fp32"],
        "bf16_vs_fp32_mlm": med["ours_mlm"] / med["ours_mlm_fp32"],
        "bf16_fp32_loss_rel_gap_clm": gaps["clm"],
        "bf16_fp32_loss_rel_gap_mlm": gaps["mlm"],
        "bf16_loss_within_tolerance": max(gaps.values()) <= LOSS_TOLERANCE,
        **{f"{k}_tokens_per_s": v for k, v in med.items()},
        "steps": args.steps, "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
