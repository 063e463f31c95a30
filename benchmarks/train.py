"""Training-step benchmark: how close each step comes to this machine's matmul peak, and
lmforge's `fit` against transformers' Trainer.

1. **The limit** (`peak_gflops`): the best dense matmul rate torch reaches here, square GEMMs
   of 1024 to 4096 in fp32 and bf16, with the threads the stages use (torch's default).
2. **Achieved** (`achieved_gflops`, `share_of_peak`): each objective's pretraining step
   (clm, mlm, mlm_nsp, rtd at the demo profile's shapes) and the fine-tuning step (each
   architecture's classifier on the built-in task, batched by length as the stage does), in
   the precision `dtype: auto` picks on this machine, with the useful FLOPs of
   `components/train/flops.py` (padding and embedding lookups count nothing), against the peak
   in that precision. The machine's speed drifts (noisy neighbours: the fp32 peak has read
   111-186 GFLOP/s within a day here), so each timed run also gets the peak of 1024 and 2048
   products measured just before it (`adjacent_peak_gflops`, `share_of_adjacent_peak`: the
   median of the runs' own ratios); `share_of_peak` stays the stricter figure, against the
   best peak of the whole benchmark. Beside it, the bound the step's shapes set
   (`gemm_ceiling_gflops`, `gemm_ceiling_share_of_peak`): its own matmuls replayed alone.
3. **Against a peer**: Trainer and `fit` on the same model, data, batch, steps, threads and
   precision (the one auto picks; `--precisions both` adds the other), CLM and MLM; and the
   fine-tuning step without each of its cuts: the padded forward instead of `finetune.unpad`
   (`*_padded`; `unpad_speedup_*` is the default's rate over it) and torch's dropout instead
   of `finetune.fast_cpu_dropout` (`*_torch_dropout`, `fast_cpu_dropout_speedup_*`).

Every side runs `--steps` optimiser steps `--repeats` times; rates come from the steps after
`WARMUP`, medians over repetitions. `--profile` prints torch.profiler's table for one MLM
pretraining step and one fine-tuning step instead. The last line is one JSON object.

    python -m benchmarks.train [--steps 40] [--repeats 3] [--precisions auto|both] [--profile]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from components.data.corpus import build_corpus
from components.io import read_json
from components.objectives import ARCHITECTURES, OBJECTIVES
from components.params import resolve
from components.tokens.tokenization import iter_texts, load_tokenizer, tokenize_corpus
from components.train.finetuning import precision_probe, read_labelled, training_step
from components.train.flops import flops_per_token
from components.train.loop import fit, resolve_device_dtype
from components.train.models import fast_cpu_attention, fp32_head
from components.train.precision import CACHE_ENV, training_probe
from components.train.pretraining import PretrainData, _Trainable

WARMUP = 5
"""Steps left out of the timing on every side (see steady_rate)."""
LOSS_TOLERANCE = 0.02
"""bf16 vs fp32: relative gap of the mean training loss over the last 10 steps."""
PRETRAIN_OBJECTIVES = ("clm", "mlm", "mlm_nsp", "rtd")
CPU = torch.device("cpu")


def demo_configs() -> dict:
    """The demo profile's resolved sections (what `make demo` runs), on the CPU."""
    configs = resolve({"profile": "demo"}).configs
    return {**configs, "pretrain": replace(configs["pretrain"], device="cpu"),
            "finetune": replace(configs["finetune"], device="cpu")}


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 4096), budget_s: float = 2.0) -> dict:
    """The best rate of an n x n x n matmul in `dtype` over `sizes` (the fastest of >= 3 timed
    products after one warm-up: a peak, on machines whose speed drifts), in GFLOP/s. The climb
    ends before a size whose one product would take longer than `budget_s` at the last size's
    rate (bf16 without hardware support runs ~100x below fp32)."""
    rates = {}
    for i, n in enumerate(sizes):
        if i and 2 * n**3 / (rates[sizes[i - 1]] * 1e9) > budget_s:
            break
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        rates[n] = 2 * n**3 / _fastest(lambda: a @ b) / 1e9
    return {"gflops": max(rates.values()), "by_size": rates}


def _fastest(run) -> float:
    """Seconds of the fastest call of `run` after one warm-up: at least 3 calls, more (up to 50)
    until 0.5 s have been spent."""
    run()
    times = []
    while len(times) < 3 or (sum(times) < 0.5 and len(times) < 50):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def prepare_data(work: Path, configs: dict) -> dict:
    """Corpus -> tokenizers -> packed blocks, with the pipeline's own components; returns, per
    objective, (tokenizer, PretrainData) and, under "downstream", (labels, train split)."""
    build_corpus(configs["data"], configs["downstream"], 1337, work / "corpus", work / "downstream")
    texts = {s: list(iter_texts(work / "corpus" / f"{s}.parquet")) for s in ("train", "validation")}
    out = {}
    for arch in ARCHITECTURES.values():
        arch.train_tokenizer(iter(texts["train"]), configs["tokenizer"], work / arch.name)
    for objective in PRETRAIN_OBJECTIVES:
        tok = load_tokenizer(work / OBJECTIVES[objective].architecture.name)
        tokenize_corpus(OBJECTIVES[objective], tok, texts, configs["tokenize"], 1337, work / objective)
        out[objective] = (tok, PretrainData(work / objective, "train"))
    labels = read_json(work / "downstream" / "labels.json")["labels"]
    # Every training example (not the demo's 100): the step's cost is per batch, and the full
    # split gives the length mix the stage batches from.
    out["downstream"] = (labels, read_labelled(work / "downstream" / "train.parquet", labels))
    return out


def steady_rate(step_ends: list[float], amounts: list[float]) -> float:
    """Amount per second over the steps after WARMUP (end to end: data, forward, backward,
    update): the first steps pay one-off costs (oneDNN builds kernels for each new shape, the
    allocator grows) that a real run amortises over thousands. `amounts[i]` is step i's."""
    return float(sum(amounts[WARMUP:]) / (step_ends[-1] - step_ends[WARMUP - 1]))


def steady_tokens_per_s(step_ends: list[float], tokens_per_step: int) -> float:
    """Tokens/s from the median step period after WARMUP steps (fixed-shape steps)."""
    periods = np.diff(step_ends[WARMUP - 1:])
    return tokens_per_step / float(np.median(periods))


def _pretraining(objective: str, tok, data: PretrainData, configs: dict, cfg):
    torch.manual_seed(0)
    model = OBJECTIVES[objective].build_model(replace(configs["model"], dropout=cfg.dropout), tok, cfg)
    obj = OBJECTIVES[objective].training(tok, cfg)
    order = np.random.default_rng(0).permutation(data.n)

    def next_batch(step, micro):
        idx = order[(step * cfg.batch_size) % (data.n - cfg.batch_size):][: cfg.batch_size]
        return obj.prepare(data.batch(idx, CPU), torch.Generator().manual_seed(step))

    return _Trainable(model, obj), next_batch


def run_pretraining(objective: str, tok, data: PretrainData, configs: dict, cfg, steps: int) -> dict:
    """One pretraining run of `steps`: tokens/s, useful GFLOP/s and the losses."""
    trainable, next_batch = _pretraining(objective, tok, data, configs, cfg)
    block = data.meta["block_size"]
    real = data.meta["splits"]["train"]["packing_efficiency"]
    per_position = flops_per_token(trainable, block, OBJECTIVES[objective].masked_fraction(cfg), real)
    ends, losses = [], []

    def on_log(step, metrics):
        ends.append(time.perf_counter())
        losses.append(metrics["train_loss"])

    fit(trainable, cfg, steps, next_batch, lambda m, b: m(b), on_log=on_log, log_every=1)
    tokens_per_s = steady_tokens_per_s(ends, cfg.batch_size * block)
    return {"tokens_per_s": tokens_per_s, "gflops": tokens_per_s * per_position / 1e9, "losses": losses}


def _classifier(arch_name: str, tok, labels, configs: dict):
    arch = ARCHITECTURES[arch_name]
    tok = arch.prepare_classifier_tokenizer(tok, configs["finetune"].max_length)
    torch.manual_seed(0)
    return arch, tok, arch.build_classifier(configs["model"], tok, labels, None)


def run_finetuning(arch_name: str, tok, labels, train, configs: dict, cfg, steps: int) -> dict:
    """One fine-tuning run of `steps` (a scratch classifier; pretrained weights cost the same):
    real tokens/s and useful GFLOP/s, each batch's FLOPs counted at its own padded width (the
    attention's; the dense layers' count real tokens), and the batches' padding share (the
    positions `finetune.unpad` leaves out)."""
    arch, tok, model = _classifier(arch_name, tok, labels, configs)
    step = training_step(tok, train, len(labels), cfg, 0, CPU, arch.unpadded_logits)
    flops, tokens, positions, ends = [], [], [], []

    def next_batch(i, micro):
        batch = step.next_batch(i, micro)
        rows, width = batch["input_ids"].shape
        real = int(batch["attention_mask"].sum())
        flops.append(flops_per_token(model, width, 1.0, real / (rows * width)) * rows * width)
        tokens.append(real)
        positions.append(rows * width)
        return batch

    _, dtype = resolve_device_dtype("cpu", cfg.dtype)
    with fp32_head(model, arch.classifier_head, CPU, dtype):
        fit(model, cfg, steps, next_batch, step.loss_fn, on_log=lambda s, m: ends.append(time.perf_counter()),
            log_every=1)
    return {"tokens_per_s": steady_rate(ends, tokens), "gflops": steady_rate(ends, flops) / 1e9,
            "padding_share": 1 - sum(tokens) / sum(positions), "losses": []}


def probe_pretraining(objective: str, tok, data: PretrainData, configs: dict) -> dict:
    """What `dtype: auto` picks for this objective's demo step on this machine (measured now:
    the caller points the cache at a fresh directory), and what the probe cost."""
    cfg = configs["pretrain"]
    trainable, next_batch = _pretraining(objective, tok, data, configs, cfg)
    probe = training_probe(trainable, next_batch(0, 0), lambda m, b: m(b), CPU,
                           lambda dtype: fast_cpu_attention(trainable, CPU, dtype), shape_model=trainable.inner)
    return _choose(probe)


def probe_finetuning(arch_name: str, tok, labels, train, configs: dict) -> dict:
    arch, tok, model = _classifier(arch_name, tok, labels, configs)
    step = training_step(tok, train, len(labels), configs["finetune"], 0, CPU, arch.unpadded_logits)
    return _choose(precision_probe(model, step, arch.classifier_head, CPU))


def _choose(probe) -> dict:
    start = time.perf_counter()
    _, dtype = resolve_device_dtype("cpu", "auto", probe)
    return {"dtype": str(dtype).removeprefix("torch."), "bf16_speedup": probe.record["bf16_speedup"],
            "seconds": time.perf_counter() - start}


def run_trainer(objective: str, tok, data: PretrainData, configs: dict, cfg, steps: int, work: Path) -> float:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    torch.manual_seed(0)
    model = OBJECTIVES[objective].build_model(replace(configs["model"], dropout=cfg.dropout), tok, cfg)
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


def profile_steps(data: dict, configs: dict, dtypes: dict) -> None:
    """torch.profiler's table (self CPU time) for one MLM pretraining step and one BERT
    fine-tuning step, after WARMUP steps of each."""
    for name, (model, next_batch, loss_fn, cfg, wrap) in {
        "pretraining mlm": _profiled_pretraining("mlm", data, configs, dtypes["pretrain_mlm"]),
        "fine-tuning bert": _profiled_finetuning("bert", data, configs, dtypes["finetune_bert"]),
    }.items():
        prof = _profile_one_step(model, next_batch, loss_fn, cfg, wrap)
        print(f"\n== {name} ({cfg.dtype}): one step\n"
              + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


def _profile_one_step(model, next_batch, loss_fn, cfg, wrap, record_shapes: bool = False):
    """torch.profiler over one training step, after WARMUP unprofiled ones, under `wrap()`."""
    from torch.profiler import ProfilerActivity, profile

    with wrap():
        fit(model, cfg, WARMUP, next_batch, loss_fn)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=record_shapes) as prof:
            fit(model, replace(cfg, warmup_steps=0), 1, next_batch, loss_fn)
    return prof


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
PROFILER_DTYPES = {"float": torch.float32, "c10::BFloat16": torch.bfloat16, "c10::Half": torch.float16,
                   "double": torch.float64}


def step_matmuls(model, next_batch, loss_fn, cfg, wrap) -> list[tuple[str, list[tuple[int, ...]], torch.dtype]]:
    """(op, operand shapes, dtype) of each matmul (mm, addmm, bmm, baddbmm) one training step
    runs, profiled after WARMUP steps under `wrap()`. Under autocast, a direct torch.addmm call
    (GPT-2's Conv1D) shows twice, autocast's call with fp32 operands around the kernel's own:
    the inner one is kept."""
    prof = _profile_one_step(model, next_batch, loss_fn, cfg, wrap, record_shapes=True)
    return [(event.name.removeprefix("aten::"), [tuple(s) for s in event.input_shapes if s],
             PROFILER_DTYPES[event.input_dtypes[0]])
            for event in prof.events()
            if event.name in MATMULS and not any(c.name in MATMULS for c in event.cpu_children)]


def matmul_flops(shapes: list[tuple[int, ...]]) -> int:
    """2 x rows x inner x columns (x batch) of a matmul whose last two operands are multiplied."""
    a, b = shapes[-2], shapes[-1]
    return 2 * math.prod(a) * b[-1]


def gemm_ceiling(model, next_batch, loss_fn, cfg, wrap) -> float:
    """The rate of a step's own matmuls alone, GFLOP/s: `step_matmuls` replayed back to back
    on fresh random operands, the fastest pass (`_fastest`). A step made of nothing but its
    matmuls would run at this rate: small GEMMs (a fine-tuning batch's few hundred rows
    against 256-wide weights) run far below a square product's peak, so this, not the peak,
    bounds the share a step of these shapes can reach."""
    calls, flops = [], 0
    for op, shapes, dtype in step_matmuls(model, next_batch, loss_fn, cfg, wrap):
        calls.append((getattr(torch, op), [torch.randn(*s, dtype=dtype) for s in shapes]))
        flops += matmul_flops(shapes)

    def replay():
        for op, operands in calls:
            op(*operands)

    return flops / _fastest(replay) / 1e9


def _profiled_pretraining(objective, data, configs, dtype):
    cfg = replace(configs["pretrain"], dtype=dtype)
    trainable, next_batch = _pretraining(objective, *data[objective], configs, cfg)
    return trainable, next_batch, lambda m, b: m(b), cfg, contextlib.nullcontext


def _profiled_finetuning(arch_name, data, configs, dtype):
    cfg = replace(configs["finetune"], dtype=dtype)
    labels, train = data["downstream"]
    arch, tok, model = _classifier(arch_name, data[OBJ_OF[arch_name]][0], labels, configs)
    step = training_step(tok, train, len(labels), cfg, 0, CPU, arch.unpadded_logits)
    return (model, step.next_batch, step.loss_fn, cfg,
            lambda: fp32_head(model, arch.classifier_head, CPU, getattr(torch, dtype)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", choices=("auto", "both"), default="auto",
                        help="the precision dtype auto picks, or fp32 and bf16 both (slow where bf16 is)")
    parser.add_argument("--profile", action="store_true", help="print one step's profile of each kind and stop")
    args = parser.parse_args()
    if args.steps <= WARMUP + 1:
        parser.error(f"--steps must be above {WARMUP + 1} (the first {WARMUP} are not timed)")
    configs = demo_configs()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = prepare_data(work, configs)
        labels, train = data["downstream"]
        block = data["clm"][1].meta["block_size"]
        threads = torch.get_num_threads()
        print(f"model {configs['model']} | pretraining batch {configs['pretrain'].batch_size} x {block} tokens | "
              f"fine-tuning batch {configs['finetune'].batch_size} x <= {configs['finetune'].max_length} tokens | "
              f"{args.steps} steps | threads {threads} | torch.compile off | rates after {WARMUP} warm-up steps",
              flush=True)
        os.environ[CACHE_ENV] = str(work / "cache")  # measure now, not a cached choice
        auto = {f"pretrain_{o}": probe_pretraining(o, *data[o], configs) for o in PRETRAIN_OBJECTIVES}
        auto |= {f"finetune_{a}": probe_finetuning(a, data[OBJ_OF[a]][0], labels, train, configs)
                 for a in ARCHITECTURES}
        print("dtype auto: " + ", ".join(f"{k} -> {a['dtype']} (bf16 {a['bf16_speedup']:.2f}x fp32, "
                                        f"{a['seconds']:.1f} s)" for k, a in auto.items()), flush=True)
        dtypes = {k: a["dtype"] for k, a in auto.items()}
        if args.profile:
            profile_steps(data, configs, dtypes)
            return
        peak = {d: matmul_peak(getattr(torch, d)) for d in ("float32", "bfloat16")}
        print("matmul peak GFLOP/s: " + ", ".join(
            f"{d} {p['gflops']:.1f} (" + ", ".join(f"{n}: {r:.1f}" for n, r in p["by_size"].items()) + ")"
            for d, p in peak.items()), flush=True)
        # What each step's own matmuls reach alone (the bound its shapes set), in auto's precision.
        ceilings = {f"pretrain_{o}": gemm_ceiling(*_profiled_pretraining(o, data, configs, dtypes[f"pretrain_{o}"]))
                    for o in PRETRAIN_OBJECTIVES}
        ceilings |= {f"finetune_{a}": gemm_ceiling(*_profiled_finetuning(a, data, configs, dtypes[f"finetune_{a}"]))
                     for a in ARCHITECTURES}
        print("the steps' matmuls alone, GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.items()),
              flush=True)
        precisions = ("float32", "bfloat16") if args.precisions == "both" else (None,)
        rows: dict[str, list[dict]] = {}
        adjacent = lambda dtype: matmul_peak(getattr(torch, dtype), sizes=(1024, 2048))["gflops"]  # noqa: E731
        for rep in range(args.repeats):
            for precision in precisions:
                suffix = "" if precision is None else f"_{precision}"
                for o in PRETRAIN_OBJECTIVES:
                    cfg = replace(configs["pretrain"], dtype=precision or dtypes[f"pretrain_{o}"])
                    rows.setdefault(f"pretrain_{o}{suffix}", []).append(
                        {"adjacent_peak": adjacent(cfg.dtype),
                         **run_pretraining(o, *data[o], configs, cfg, args.steps), "dtype": cfg.dtype})
                for a in ARCHITECTURES:
                    cfg = replace(configs["finetune"], dtype=precision or dtypes[f"finetune_{a}"])
                    # The defaults (finetune.unpad, fast_cpu_dropout), and each without its cut beside them.
                    for variant, change in (("", {}), ("_padded", {"unpad": False}),
                                            ("_torch_dropout", {"fast_cpu_dropout": False})):
                        rows.setdefault(f"finetune_{a}{suffix}{variant}", []).append(
                            {"adjacent_peak": adjacent(cfg.dtype),
                             **run_finetuning(a, data[OBJ_OF[a]][0], labels, train, configs,
                                              replace(cfg, **change), args.steps), "dtype": cfg.dtype})
                for o in ("clm", "mlm"):
                    cfg = replace(configs["pretrain"], dtype=precision or dtypes[f"pretrain_{o}"])
                    rows.setdefault(f"trainer_{o}{suffix}", []).append(
                        {"tokens_per_s": run_trainer(o, *data[o], configs, cfg, args.steps, work), "dtype": cfg.dtype})
            print(f"repetition {rep + 1}: " + ", ".join(
                f"{k} {v[-1]['tokens_per_s']:,.0f} tok/s" + (f" {v[-1]['gflops']:.1f} GFLOP/s" if "gflops" in v[-1] else "")
                for k, v in rows.items()), flush=True)
        # Measured again at the end: the peak is the better of the two (shares are never flattered
        # by a slow moment at the start).
        again = matmul_peak(torch.float32)
        peak["float32"] = max((peak["float32"], again), key=lambda p: p["gflops"])
    result = summarise(rows, peak, auto, ceilings, args)
    print(f"\n{'step':<30}{'dtype':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'of peak':>9}{'of adjacent':>13}"
          f"{'matmuls alone':>15}")
    for k, v in result["steps_measured"].items():
        print(f"{k:<30}{v['dtype']:>9}{v['tokens_per_s']:>10,.0f}"
              + (f"{v['achieved_gflops']:>9.1f}{v['share_of_peak']:>9.1%}{v['share_of_adjacent_peak']:>13.1%}"
                 if "achieved_gflops" in v else "")
              + (f"{v['gemm_ceiling_share_of_peak']:>15.1%}" if "gemm_ceiling_share_of_peak" in v else ""))
    print(json.dumps(result))


OBJ_OF = {"gpt2": "clm", "bert": "mlm"}
"""Whose tokenizer each architecture's classifier reads (the stage's: tokenizers/<arch>)."""


def summarise(rows: dict, peak: dict, auto: dict, ceilings: dict, args) -> dict:
    """Medians over repetitions, each step's share of the peak in its precision, the ratios;
    for the default steps, their matmuls' rate alone (`ceilings`) and its share of the peak."""
    steps = {}
    for key, runs in rows.items():
        dtype = runs[0]["dtype"]
        entry = {"dtype": dtype, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs)}
        if "gflops" in runs[0]:
            achieved = statistics.median(r["gflops"] for r in runs)
            entry |= {"achieved_gflops": achieved, "share_of_peak": achieved / peak[dtype]["gflops"],
                      "adjacent_peak_gflops": statistics.median(r["adjacent_peak"] for r in runs),
                      "share_of_adjacent_peak": statistics.median(r["gflops"] / r["adjacent_peak"] for r in runs)}
        if "padding_share" in runs[0]:
            entry["padding_share"] = statistics.median(r["padding_share"] for r in runs)
        if key in ceilings and dtype == auto[key]["dtype"]:
            entry |= {"gemm_ceiling_gflops": ceilings[key],
                      "gemm_ceiling_share_of_peak": ceilings[key] / peak[dtype]["gflops"]}
        steps[key] = entry
    ratio = lambda a, b: steps[a]["tokens_per_s"] / steps[b]["tokens_per_s"]  # noqa: E731
    suffix = "" if args.precisions == "auto" else f"_{auto['pretrain_mlm']['dtype']}"
    result = {
        "cpu": _cpu(), "threads": torch.get_num_threads(),
        "peak_gflops": {d: p["gflops"] for d, p in peak.items()},
        "peak_gflops_by_size": {d: p["by_size"] for d, p in peak.items()},
        **{f"auto_{k}": a["dtype"] for k, a in auto.items()},
        **{f"auto_probe_bf16_speedup_{k}": a["bf16_speedup"] for k, a in auto.items()},
        **{f"{k}_achieved_gflops": v["achieved_gflops"] for k, v in steps.items() if "achieved_gflops" in v},
        **{f"{k}_share_of_peak": v["share_of_peak"] for k, v in steps.items() if "share_of_peak" in v},
        **{f"{k}_share_of_adjacent_peak": v["share_of_adjacent_peak"] for k, v in steps.items()
           if "share_of_adjacent_peak" in v},
        **{f"{k}_{m}": v[m] for k, v in steps.items()
           for m in ("gemm_ceiling_gflops", "gemm_ceiling_share_of_peak") if m in v},
        **{f"{k}_tokens_per_s": v["tokens_per_s"] for k, v in steps.items()},
        **{f"{k}_padding_share": v["padding_share"] for k, v in steps.items() if "padding_share" in v},
        **{f"fast_cpu_dropout_speedup_{k.removesuffix('_torch_dropout')}": ratio(k.removesuffix("_torch_dropout"), k)
           for k in steps if k.endswith("_torch_dropout")},
        **{f"unpad_speedup_{k.removesuffix('_padded')}": ratio(k.removesuffix("_padded"), k)
           for k in steps if k.endswith("_padded")},
        "clm_speedup": ratio(f"pretrain_clm{suffix}", f"trainer_clm{suffix}"),
        "mlm_speedup": ratio(f"pretrain_mlm{suffix}", f"trainer_mlm{suffix}"),
        "steps": args.steps, "repeats": args.repeats, "steps_measured": steps,
    }
    if args.precisions == "both":
        tail = lambda c: float(np.mean(c[-10:]))  # noqa: E731
        for o in ("clm", "mlm"):
            bf16, fp32 = rows[f"pretrain_{o}_bfloat16"], rows[f"pretrain_{o}_float32"]
            result[f"bf16_vs_fp32_{o}"] = ratio(f"pretrain_{o}_bfloat16", f"pretrain_{o}_float32")
            gap = abs(tail(bf16[-1]["losses"]) - tail(fp32[-1]["losses"])) / tail(fp32[-1]["losses"])
            result[f"bf16_fp32_loss_rel_gap_{o}"] = gap
        result["bf16_loss_within_tolerance"] = max(result[f"bf16_fp32_loss_rel_gap_{o}"]
                                                   for o in ("clm", "mlm")) <= LOSS_TOLERANCE
    return result


def _cpu() -> str:
    from components.train.precision import cpu_name

    return cpu_name()


if __name__ == "__main__":
    main()
