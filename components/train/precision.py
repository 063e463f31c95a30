"""`dtype: auto` on CPU: the faster of fp32 and bf16 autocast, measured on this machine.

Why measured, not read from a CPU flag: the flag says bf16 is supported, not that it pays.
On an Intel Xeon with AVX512-BF16 but no AMX our demo training step ran at 0.81x (CLM) and
0.69x (MLM) fp32's speed in bf16; on an AMD EPYC with the same flag, 1.5x. So a stage times
a few forward+backward steps of its own model on its own first batch in each precision
(`probe`) and keeps the faster. The answer is cached per machine in one small JSON file
keyed by CPU model, torch version and model and batch shape (`cache_path`), so later
stages and reruns reuse it without measuring: one choice per machine and shape, not one
per run's noise. The probe restores the RNG state and clears the gradients it made, so a
run that picked bf16 trains exactly as one told `dtype: bfloat16`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from components.io import write_json_atomic

CACHE_ENV = "LMFORGE_CACHE_DIR"
"""Overrides the cache directory (tests point it at a temporary one)."""
MIN_SPEEDUP = 1.05
"""bf16 must be at least this much faster than fp32 to be picked: fp32 is the exact
reference, so a tie within the timing noise of a shared machine goes to it."""
WARMUP, REPEATS = 1, 4
"""Untimed steps per precision (oneDNN builds its kernels for each new shape), then timed
steps per precision, interleaved so load on a shared machine hits both alike."""
MAX_SECONDS = 10.0
"""Timed steps stop early past this (a slow or loaded machine: one demo step took 5 s on a
2-core box at load 9); at least one timed step per precision is always taken."""
CHOICES = ("float32", "bfloat16")
FAR_BEHIND = 0.5
"""A cached bf16 speedup below this, on this CPU and torch for any shape, settles fp32 for
every shape without measuring: bf16 emulated in software (an AVX2-only AMD EPYC measured
0.11x) is no shape's win, and each probe there costs about a minute (two bf16 steps)."""


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype` on `device`; nothing in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class Probe:
    """What `dtype: auto` measures on CPU: `step(dtype)` runs one forward+backward of the
    stage's real model and batch under that precision; `shape` (from `shape_of`) keys the
    cache. `record` holds the choice once made: dtype, the bf16 speedup, where it came from."""

    step: Callable[[torch.dtype], None]
    shape: Mapping
    record: dict = field(default_factory=dict)


def shape_of(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> dict:
    """The cache key's model and batch shape: class, parameter count, a digest of every
    parameter's name and shape, and the batch's tensor shapes."""
    params = [(name, list(p.shape)) for name, p in model.named_parameters()]
    layout = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:12]
    return {"model": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "layout": layout, "batch": {k: list(v.shape) for k, v in sorted(batch.items())
                                        if isinstance(v, torch.Tensor)}}


def training_probe(model: torch.nn.Module, batch: dict, loss_fn: Callable, device: torch.device,
                   wrap: Callable[[torch.dtype], contextlib.AbstractContextManager], shape_model=None) -> Probe:
    """A Probe timing `loss_fn(model, batch)` and its backward as `fit` runs them: inside
    `wrap(dtype)` (the caller's precision helpers: CPU attention, an fp32 head), the forward
    under autocast. `shape_model` (default `model`) names the model in the cache key."""

    def step(dtype: torch.dtype) -> None:
        was_training = model.training
        model.train()  # dropout on, as in training
        try:
            with wrap(dtype):
                with autocast(device, dtype):
                    loss = loss_fn(model, batch)
                loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    return Probe(step, shape_of(shape_model if shape_model is not None else model, batch))


def cache_dir() -> Path:
    """$LMFORGE_CACHE_DIR, else $XDG_CACHE_HOME/lmforge, else ~/.cache/lmforge."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cache_key(shape: Mapping) -> dict:
    return {"cpu": cpu_name(), "torch": torch.__version__, "shape": dict(shape)}


def cache_path(key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"precision-{digest}.json"


def pick(timings: Mapping[str, Sequence[float]], min_speedup: float = MIN_SPEEDUP) -> tuple[str, float]:
    """(the faster precision, bf16's speedup over fp32) from per-step seconds of each:
    medians, so one step slowed by another process does not decide."""
    speedup = statistics.median(timings["float32"]) / statistics.median(timings["bfloat16"])
    return ("bfloat16" if speedup >= min_speedup else "float32"), speedup


def measure(step: Callable[[torch.dtype], None], warmup: int = WARMUP, repeats: int = REPEATS,
            max_seconds: float = MAX_SECONDS) -> dict[str, list[float]]:
    """Seconds per `step(dtype)` for fp32 and bf16, interleaved; RNG state restored after."""
    rng = torch.get_rng_state()
    timings: dict[str, list[float]] = {name: [] for name in CHOICES}
    begin = time.perf_counter()
    try:
        for i in range(warmup + repeats):
            if i > warmup and time.perf_counter() - begin > max_seconds:
                break
            for name in CHOICES:
                start = time.perf_counter()
                step(getattr(torch, name))
                if i >= warmup:
                    timings[name].append(time.perf_counter() - start)
    finally:
        torch.set_rng_state(rng)
    return timings


def read_cache(path: Path, key: Mapping) -> dict | None:
    """The cached record at `path` if it is for `key`; None if absent. An unreadable or
    foreign file is ignored with a warning (it is measured again and overwritten)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("key") != json.loads(json.dumps(key)) or record.get("dtype") not in CHOICES:
            raise ValueError("not a precision record for this machine and shape")
        float(record["bf16_speedup"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        warnings.warn(f"{path}: ignoring the precision cache ({e}); measuring again", stacklevel=2)
        return None
    return record


def bf16_far_behind(key: Mapping) -> dict | None:
    """A cached record for this CPU and torch (any shape) whose bf16 speedup is under
    FAR_BEHIND, or None."""
    for path in sorted(cache_dir().glob("precision-*.json")):
        try:
            record = json.loads(path.read_text())
            same = {k: v for k, v in record["key"].items() if k != "shape"} == \
                {k: v for k, v in key.items() if k != "shape"}
            if same and float(record["bf16_speedup"]) < FAR_BEHIND:
                return record
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return None


def write_cache(path: Path, record: dict) -> None:
    """Atomically (a stage running beside another may write the same key)."""
    write_json_atomic(path, record)


def choose(probe: Probe, label: str = "dtype") -> str:
    """`dtype: auto` on CPU: the cached choice for this machine and shape, else measured now
    and cached. Fills `probe.record` and prints one line saying which and why."""
    key = cache_key(probe.shape)
    path = cache_path(key)
    record = read_cache(path, key)
    source = f"cached in {path}"
    if record is None and (slow := bf16_far_behind(key)) is not None:
        record = {"key": key, "dtype": "float32", "bf16_speedup": slow["bf16_speedup"]}
        source = f"bf16 measured at {slow['bf16_speedup']:.2f}x for {slow['key']['shape'].get('model')} on this CPU"
    if record is None:
        start = time.perf_counter()
        timings = measure(probe.step)
        dtype, speedup = pick(timings)
        record = {"key": key, "dtype": dtype, "bf16_speedup": round(speedup, 4),
                  "fp32_step_ms": round(1e3 * statistics.median(timings["float32"]), 3),
                  "bf16_step_ms": round(1e3 * statistics.median(timings["bfloat16"]), 3),
                  "probe_seconds": round(time.perf_counter() - start, 3), "min_speedup": MIN_SPEEDUP,
                  "threads": torch.get_num_threads()}
        try:
            write_cache(path, record)
            source = f"measured in {record['probe_seconds']:.1f} s, cached in {path}"
        except OSError as e:
            source = f"measured in {record['probe_seconds']:.1f} s, not cached ({e})"
    probe.record = {"dtype": record["dtype"], "bf16_speedup": record["bf16_speedup"], "source": source,
                    "cpu": key["cpu"]}
    print(f"precision: {label} auto -> {record['dtype']} (bf16 step {record['bf16_speedup']:.2f}x fp32's speed, "
          f"needs >= {MIN_SPEEDUP}x; {key['cpu']}; {source})", file=sys.stderr, flush=True)
    return record["dtype"]
