"""`make gpu-check`: the gpu-small shapes trained through lmforge's own `pretrain` on one GPU.

Needs only torch, transformers (with its tokenizers), safetensors and numpy: no tokenizer
training, no MLflow, Prefect, DVC or datasets. The data are synthetic token rows with
structure to learn (Zipf-distributed phrases of 8 tokens drawn from one of 16 topic banks;
NSP pairs are same-topic or not), written in the tokenize stage's format, so every batch
goes through PretrainData, the objective's masking and loss, `fit`, and Checkpointer.

On CUDA, one after another, within --budget-s (phases that would not fit are skipped and
named; the plan is in benchmarks/README.md):
- train: clm, mlm, mlm_nsp at gpu-small shapes and batch (12 x 768, 512 tokens, vocab
  32,000, 32 x 4 micro-batches), bf16: tokens/s over the steady log windows, MFU against
  the chip's dense bf16 peak, peak memory, loss at the first and last log step;
- resume: per objective, stop after N steps (a checkpoint, then an interruption), resume to
  2N, compare every step's loss with an uninterrupted 2N run: must be equal (deterministic
  kernels and SDPA's math backend for this phase, so only the resume can differ);
- compile: clm again with `pretrain.compile`, tokens/s against the eager run.
On CPU it is a dry run at tiny shapes (NOT a GPU measurement): the same phases except compile,
few steps. The last line is one JSON object; exit 1 if a check failed or a phase broke.

    python -m benchmarks.gpu_check [--budget-s 420] [--steps N] [--compile-objectives clm,mlm]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from components.config import ModelConfig, PretrainConfig
from components.objectives import OBJECTIVES as SPECS, CausalLM
from components.params import resolve
from components.train.checkpoint import Checkpointer
from components.train.flops import device_peak_flops, flops_per_token
from components.train.models import count_parameters
from components.train.pretraining import pretrain

OBJECTIVES = tuple(SPECS)
GPU_SMALL = resolve({"profile": "gpu-small"}).configs
SHAPES = {
    "cuda": {"model": dataclasses.asdict(GPU_SMALL["model"]), "vocab": GPU_SMALL["tokenizer"].vocab_size,
             "block": GPU_SMALL["tokenize"].block_size, "batch": GPU_SMALL["pretrain"].batch_size,
             "grad_accum": GPU_SMALL["pretrain"].grad_accum, "lr": GPU_SMALL["pretrain"].lr,
             "train_steps": 120, "compile_steps": 60, "resume_steps": 10, "resume_batch": 8, "rows": 4096},
    "cpu": {"model": {"n_layers": 2, "n_heads": 2, "d_model": 64, "d_ff": 256, "max_positions": 64},
            "vocab": 512, "block": 64, "batch": 8, "grad_accum": 1, "lr": 3e-3,
            "train_steps": 20, "compile_steps": 0, "resume_steps": 3, "resume_batch": 4, "rows": 256},
}
# Seconds each phase may take on an H200 (upper ends of the estimates in benchmarks/README.md).
PHASE_S = {"train": 60, "resume": 30, "compile": 180}
PHRASE, TOPICS, BANK = 8, 16, 64
SEED = 1234


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_tokenizer(objective: str, vocab_size: int, block: int):
    """A word-level tokenizer of `vocab_size` ids with the objective's special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = dict(SPECS[objective].architecture.specials)
    names = list(dict.fromkeys(specials.values()))
    vocab = {name: i for i, name in enumerate(names + [f"t{i}" for i in range(vocab_size - len(names))])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials.get("unk_token", names[0])))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"bos_token": specials["eos_token"]} if "eos_token" in specials else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=block, **specials, **extra)


def phrase_rows(rng: np.random.Generator, n: int, length: int, topics: np.ndarray, first_id: int, vocab: int):
    """`n` rows of `length` tokens: Zipf-chosen phrases from each row's topic bank."""
    token_p = 1.0 / np.arange(1, vocab - first_id + 1) ** 1.1
    bank = rng.choice(vocab - first_id, size=(TOPICS * BANK, PHRASE), p=token_p / token_p.sum()) + first_id
    phrase_p = 1.0 / np.arange(1, BANK + 1)
    picks = rng.choice(BANK, size=(n, -(-length // PHRASE)), p=phrase_p / phrase_p.sum()) + topics[:, None] * BANK
    return bank[picks].reshape(n, -1)[:, :length]


def write_data(objective: str, tokenizer, rows: int, block: int, out: Path) -> Path:
    """Train and validation splits as the tokenize stage writes them (`<split>.<array>.npy`, meta.json)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab, dtype = len(tokenizer), np.uint16 if len(tokenizer) <= 65536 else np.int32
    first_id = len(tokenizer.all_special_ids)
    meta = {"objective": objective, "block_size": block, "vocab_size": vocab, "dtype": np.dtype(dtype).name,
            "synthetic": True, "splits": {}, "arrays": {}}
    for split, n in (("train", rows), ("validation", max(64, rows // 16))):
        rng = np.random.default_rng([SEED, int(split == "train")])
        topics = rng.integers(0, TOPICS, n)
        if isinstance(SPECS[objective], CausalLM):
            arrays = {"input_ids": phrase_rows(rng, n, block, topics, first_id, vocab)}
        else:
            arrays = _bert_rows(getattr(SPECS[objective], "next_sentence", False), tokenizer, rng, n, block, topics,
                                first_id)
        for name, arr in arrays.items():
            arr = arr.astype(dtype if name == "input_ids" else np.uint8)
            np.save(out / f"{split}.{name}.npy", arr)
            meta["arrays"][f"{split}.{name}.npy"] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        meta["splits"][split] = {"blocks": n}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def _bert_rows(next_sentence: bool, tokenizer, rng, n, block, topics, first_id) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] (mlm, rtd), or [CLS] A [SEP] B [SEP] with B from another topic half the time (mlm_nsp)."""
    cls, sep, vocab = tokenizer.cls_token_id, tokenizer.sep_token_id, len(tokenizer)
    column = np.full((n, 1), 0)
    if not next_sentence:
        body = phrase_rows(rng, n, block - 2, topics, first_id, vocab)
        ids = np.concatenate([column + cls, body, column + sep], axis=1)
        return {"input_ids": ids, "word_starts": np.ones_like(ids)}
    half = (block - 3) // 2
    labels = rng.integers(0, 2, n)
    other = np.where(labels == 1, (topics + rng.integers(1, TOPICS, n)) % TOPICS, topics)
    a = phrase_rows(rng, n, half, topics, first_id, vocab)
    b = phrase_rows(rng, n, block - 3 - half, other, first_id, vocab)
    ids = np.concatenate([column + cls, a, column + sep, b, column + sep], axis=1)
    types = np.zeros_like(ids)
    types[:, half + 2:] = 1
    return {"input_ids": ids, "token_type_ids": types, "nsp_labels": labels, "word_starts": np.ones_like(ids)}


def model_flops_per_token(objective: str, model, shapes: dict, masked_fraction: float) -> float:
    """Useful FLOPs per token (components/train/flops.py): matmul weights without embedding
    lookups, the MLM (rtd: generator) head on its masked share, attention's 12*L*d*T per network;
    synthetic rows have no padding."""
    return flops_per_token(model, shapes["block"], masked_fraction)


class _Interrupted(Exception):
    """Raised right after a checkpoint is written: a preemption at the worst useful moment."""


class _StopAfter(Checkpointer):
    def __init__(self, *args, stop_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def save(self, step, model, optimizer, state, *args, **kwargs):
        path = super().save(step, model, optimizer, state, *args, **kwargs)
        if step == self.stop_at:
            raise _Interrupted(step)
        return path


def run_pretrain(objective: str, tokenizer, data: Path, shapes: dict, cfg: PretrainConfig,
                 checkpointer: Checkpointer | None = None) -> tuple[dict, list[tuple[int, dict]], object]:
    """One `pretrain` call on a fresh model (same seed each time); (result, logs, model)."""
    spec = SPECS[objective]
    torch.manual_seed(SEED)
    model = spec.build_model(ModelConfig(**shapes["model"]), tokenizer)
    logs: list[tuple[int, dict]] = []
    result = pretrain(spec.training(tokenizer, cfg), model, data, cfg, SEED,
                      on_log=lambda s, m: logs.append((s, m)), checkpointer=checkpointer)
    return result, logs, model


def _cfg(shapes: dict, steps: int, batch: int, grad_accum: int, log_every: int, eval_every: int,
         **kw) -> PretrainConfig:
    return PretrainConfig(max_steps=steps, batch_size=batch, grad_accum=grad_accum, lr=shapes["lr"],
                          warmup_steps=max(2, steps // 10), eval_every=eval_every, eval_batches=2,
                          log_every=log_every, checkpoint_every=eval_every, **kw)


def train_phase(objective: str, tokenizer, data: Path, shapes: dict, steps: int, compile_model: bool = False) -> dict:
    """Throughput, MFU, peak memory and the loss curve's ends of one run."""
    cuda = torch.cuda.is_available()
    log_every = max(1, steps // 10)
    cfg = _cfg(shapes, steps, shapes["batch"], shapes["grad_accum"], log_every, steps, compile=compile_model)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result, logs, model = run_pretrain(objective, tokenizer, data, shapes, cfg)
    train = [(step, m) for step, m in logs if "train_loss" in m]
    windows = [m["tokens_per_s"] for _, m in train]
    steady = float(np.median(windows[1:] if len(windows) > 1 else windows))  # the first pays warm-up / compile
    per_token = model_flops_per_token(objective, model, shapes, SPECS[objective].masked_fraction(cfg))
    peak = device_peak_flops(torch.cuda.get_device_name()) if cuda else None
    first, last = train[0], train[-1]
    return {
        "params": count_parameters(model), "steps": steps, "tokens": result["tokens"], "dtype": result["dtype"],
        "tokens_per_s": round(steady), "tokens_per_s_whole_run": round(result["tokens_per_s"]),
        "first_window_s": round(first[0] * cfg.batch_size * cfg.grad_accum * shapes["block"] / windows[0], 2),
        "model_tflops_per_s": round(steady * per_token / 1e12, 2),
        "mfu": round(steady * per_token / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss_first": [first[0], round(first[1]["train_loss"], 4)],
        "loss_last": [last[0], round(last[1]["train_loss"], 4)],
        "falling": last[1]["train_loss"] < 0.9 * first[1]["train_loss"],
        "val_loss": round(result["val_loss"], 4),
    }


@contextlib.contextmanager
def deterministic_kernels():
    """Kernels that give the same bits every run, so a resumed run can equal a straight one:
    SDPA's math backend (flash attention's backward accumulates in a varying order) and
    torch's deterministic implementations where an op has one. The CPU dry run takes the same
    path, so a GPU run does not meet it first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import torch.utils.deterministic as det

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = False  # no NaN-filling of torch.empty: each buffer is written before read
    try:
        with sdpa_kernel(SDPBackend.MATH), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        det.fill_uninitialized_memory = fill


def resume_phase(objective: str, tokenizer, data: Path, shapes: dict, work: Path) -> dict:
    """N steps, checkpoint, interruption, resume to 2N; against one straight 2N run."""
    n = shapes["resume_steps"]
    cfg = _cfg(shapes, 2 * n, shapes["resume_batch"], 1, 1, n)
    directory = work / f"ckpt-{objective}"
    with deterministic_kernels():
        straight, _, _ = run_pretrain(objective, tokenizer, data, shapes, cfg)
        try:
            run_pretrain(objective, tokenizer, data, shapes, cfg, _StopAfter(directory, n, 2, "gpu-check", stop_at=n))
            interrupted = False
        except _Interrupted:
            interrupted = True
        again = Checkpointer(directory, n, 2, "gpu-check")
        resumed, _, _ = run_pretrain(objective, tokenizer, data, shapes, cfg, again)
    shutil.rmtree(directory, ignore_errors=True)
    a, b = straight["curve"], resumed["curve"]
    diffs = [abs(x[1] - y[1]) for x, y in zip(a, b)]
    return {
        "steps": [n, 2 * n], "interrupted_at": n if interrupted else None, "resumed_from": resumed["resumed_from"],
        "exact": interrupted and resumed["resumed_from"] == n and a == b and straight["history"] == resumed["history"],
        "max_abs_loss_diff": max(diffs) if len(a) == len(b) else None,
        "loss_step1": round(a[0][1], 4), "loss_final": round(a[-1][1], 4),
    }


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """The chip's bf16 matrix rate as measured here (random data, after warm-up)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    end.synchronize()
    return round(2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12, 1)


def run_phases(report: dict, shapes: dict, tokenizers: dict, data: dict, work: Path, budget_s: float,
               compile_objectives: list[str], start: float) -> None:
    """Every phase in order of importance; one that errs is recorded and the next one runs."""
    cuda = torch.cuda.is_available()
    phases = [("train", o) for o in OBJECTIVES] + [("resume", o) for o in OBJECTIVES]
    phases += [("compile", o) for o in compile_objectives]
    for phase, objective in phases:
        name = f"{phase}:{objective}"
        if cuda and time.perf_counter() - start + PHASE_S[phase] > budget_s:
            report["skipped"].append(name)
            log(f"gpu-check: skipping {name}: it would not finish inside --budget-s {budget_s:.0f}")
            continue
        log(f"gpu-check: {name} ...")
        began = time.perf_counter()
        try:
            with _deadline(budget_s - (began - start)):
                _run_phase(report, phase, objective, tokenizers[objective], data[objective], shapes, work)
        except (Exception, OutOfTime) as e:  # the JSON line must still come out, naming what broke
            report["errors"][name] = f"{type(e).__name__}: {e}"[:600]
            log(f"gpu-check: {name} failed: {report['errors'][name]}")
        finally:
            gc.collect()  # the phase's model and optimiser state, before the next one allocates
            if cuda:
                torch.cuda.empty_cache()
        report["phase_seconds"][name] = round(time.perf_counter() - began, 1)


def _run_phase(report: dict, phase: str, objective: str, tok, path: Path, shapes: dict, work: Path) -> None:
    if phase == "train":
        report["objectives"][objective] = train_phase(objective, tok, path, shapes, shapes["train_steps"])
    elif phase == "resume":
        report["resume"][objective] = resume_phase(objective, tok, path, shapes, work)
    else:
        compiled = train_phase(objective, tok, path, shapes, shapes["compile_steps"], compile_model=True)
        eager = report["objectives"].get(objective, {}).get("tokens_per_s")
        report["compile"][objective] = {
            "eager_tokens_per_s": eager, "compiled_tokens_per_s": compiled["tokens_per_s"],
            "speedup": round(compiled["tokens_per_s"] / eager, 3) if eager else None,
            "compiled_mfu": compiled["mfu"], "first_window_s": compiled["first_window_s"],
            "steps": compiled["steps"], "falling": compiled["falling"],
        }


class OutOfTime(BaseException):
    """A phase ran past the budget. Not an Exception: library code that catches and ignores
    those (an OSError while probing a file, say) must not swallow it."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """OutOfTime inside a phase that outlives the budget, so the JSON line still comes out."""
    def expire(signum, frame):
        raise OutOfTime(f"out of the time budget after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))  # 0 would disarm it
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def verdict(report: dict) -> bool:
    trained = [report["objectives"].get(o, {}).get("falling") for o in OBJECTIVES]
    resumed = [report["resume"].get(o, {}).get("exact") for o in OBJECTIVES]
    return all(trained) and all(resumed) and not report["errors"]


def summary(report: dict) -> None:
    for o in OBJECTIVES:
        t, r = report["objectives"].get(o, {}), report["resume"].get(o, {})
        log(f"  {o:8s} tokens/s {t.get('tokens_per_s')}  mfu {t.get('mfu')}  peak GiB {t.get('peak_memory_gib')}  "
            f"loss {t.get('loss_first')} -> {t.get('loss_last')}  resume exact {r.get('exact')}")
    for o, c in report["compile"].items():
        log(f"  compile {o}: {c}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock seconds for all phases")
    parser.add_argument("--steps", type=int, default=0, help="train steps per objective (0: the plan's)")
    parser.add_argument("--compile-objectives", default="clm", help="comma-separated; empty for none")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    shapes = dict(SHAPES["cuda" if cuda else "cpu"])
    if args.steps:
        shapes["train_steps"] = args.steps
    if not cuda:
        log("gpu-check: no CUDA device: CPU DRY RUN at tiny shapes, NOT a GPU measurement")
        torch.set_num_threads(1)  # tiny shapes gain nothing from threads, and a busy CI box makes them spin
    import transformers

    device = torch.cuda.get_device_name() if cuda else "cpu"
    peak = device_peak_flops(device) if cuda else None
    report: dict = {
        "check": "gpu-check", "device": device, "gpu_measurement": cuda, "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "peak_source": f"dense bf16 datasheet peak for {device!r} (components/train/flops.py)" if peak else None,
        "shapes": {k: shapes[k] for k in ("model", "vocab", "block", "batch", "grad_accum")},
        "objectives": {}, "resume": {}, "compile": {}, "skipped": [], "errors": {}, "phase_seconds": {},
    }
    compile_objectives = [o for o in args.compile_objectives.split(",") if o] if cuda else []
    if not cuda:
        report["compile"] = {"skipped": "CPU dry run: no compile (inductor's C++ build outlasts the dry run)"}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        if cuda:
            report["matmul_bf16_tflops_measured"] = matmul_tflops()
        tokenizers = {o: make_tokenizer(o, shapes["vocab"], shapes["block"]) for o in OBJECTIVES}
        data = {o: write_data(o, tokenizers[o], shapes["rows"], shapes["block"], work / o) for o in OBJECTIVES}
        run_phases(report, shapes, tokenizers, data, work, args.budget_s, compile_objectives, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = verdict(report)
    summary(report)
    if not cuda:
        log("gpu-check: CPU DRY RUN passed its checks; this is NOT a GPU measurement" if report["ok"]
            else "gpu-check: CPU DRY RUN failed")
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
