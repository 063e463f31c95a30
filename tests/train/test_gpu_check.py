"""`make gpu-check` on a machine without CUDA (its dry run), and the GPU path of the training
loop that can run on a CPU: the NaN/inf guard that skips the optimiser step on the device and
is read back only at log, evaluation and checkpoint steps."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_check
from components.config import ModelConfig, OptimConfig
from components.objectives import OBJECTIVES
from components.train import loop
from components.train.checkpoint import Checkpointer
from components.train.loop import fit
from components.train.pretraining import CausalLMTraining, PretrainData
from conftest import inf_grad

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("mlflow", "prefect", "dvc", "great_expectations", "datasets")
# A None entry in sys.modules is how "not installed" looks to both `import x` (ImportError)
# and importlib.util.find_spec (None), which transformers uses to probe optional packages;
# a finder that raised instead would crash those probes rather than report absence.
PRELUDE = f"""
import runpy, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
for name in {BLOCKED!r}:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(name + " is importable despite the block")
sys.argv[0] = "gpu_check"
runpy.run_module("benchmarks.gpu_check", run_name="__main__", alter_sys=True)
"""
TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)
CPU = {"device": "cpu", "dtype": "float32"}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_dry_run_needs_no_orchestration_stack_and_ends_with_one_json_line():
    """About 13 s of CPU time (import included); CI runs it on every change."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU DRY RUN" in proc.stderr and "NOT a GPU measurement" in proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["device"], report["gpu_measurement"], report["ok"]) == ("cpu", False, True)
    assert report["errors"] == {} and report["skipped"] == []
    for objective in gpu_check.OBJECTIVES:
        trained, resumed = report["objectives"][objective], report["resume"][objective]
        assert trained["falling"] and trained["loss_last"][1] < trained["loss_first"][1]
        assert trained["tokens_per_s"] > 0 and trained["mfu"] is None  # no peak to compare with on a CPU
        assert resumed["exact"] and resumed["resumed_from"] == resumed["steps"][0]
        assert resumed["max_abs_loss_diff"] == 0.0
    assert "skipped" in report["compile"]


def test_make_target_installs_nothing():
    rule = re.search(r"^gpu-check:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert rule and rule.group(1).strip() == "", "gpu-check must not depend on install"
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "benchmarks.gpu_check" in dry.stdout
    assert "pip" not in dry.stdout and "venv" not in dry.stdout.replace(".venv/bin/python", "")


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """gpu_check's own synthetic tokenizer and clm data, at test size."""
    tokenizer = gpu_check.make_tokenizer("clm", 320, 32)
    path = gpu_check.write_data("clm", tokenizer, 64, 32, tmp_path_factory.mktemp("clm"))
    return tokenizer, path


def test_the_resume_check_fails_when_resuming_is_not_exact(synthetic, tmp_path, monkeypatch):
    """A checkpoint that does not bring the RNG back (dropout masks) must read as not exact."""
    tokenizer, path = synthetic
    shapes = {**gpu_check.SHAPES["cpu"], "model": dataclasses.asdict(TINY), "block": 32}
    assert gpu_check.resume_phase("clm", tokenizer, path, shapes, tmp_path)["exact"]
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    broken = gpu_check.resume_phase("clm", tokenizer, path, shapes, tmp_path)
    assert not broken["exact"] and broken["max_abs_loss_diff"] > 0


def _device_guarded(monkeypatch):
    """fit with fused AdamW and the guard deferred, as on CUDA: the step is skipped on the device,
    nothing syncs in it (on the CPU the guard checks at once unless told otherwise)."""
    def fused(model, cfg, device):
        groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)

    monkeypatch.setattr(loop, "make_optimizer", fused)
    monkeypatch.setattr(loop, "_reads_back_late", lambda optimizer: True)


def _run(synthetic, total: int, poison_at: int | None = None, **kw):
    """(model, steps next_batch was asked for, fit's exception or None)."""
    tokenizer, path = synthetic
    data, objective = PretrainData(path, "train"), CausalLMTraining()
    torch.manual_seed(0)
    model = OBJECTIVES["clm"].build_model(TINY, tokenizer)
    seen: list[int] = []

    def next_batch(step, micro):
        seen.append(step)
        return objective.prepare(data.batch(np.arange(4) + step, torch.device("cpu")), torch.Generator())

    def loss_fn(m, batch):
        loss = objective.forward(m, batch)["loss"]
        return loss * float("nan") if seen[-1] == poison_at else loss

    try:
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), total, next_batch, loss_fn, **kw)
    except FloatingPointError as e:
        return model, seen, e
    return model, seen, None


def test_device_side_guard_reads_back_late_but_the_bad_step_never_reaches_the_weights(synthetic, monkeypatch):
    _device_guarded(monkeypatch)
    clean, _, _ = _run(synthetic, 10, evaluate=lambda step: step == 2, eval_every=2)  # stops after steps 0-1
    model, seen, err = _run(synthetic, 10, poison_at=2)
    assert err is not None and str(err).startswith("training loss is nan at step 2; lower the learning rate")
    assert seen == list(range(10))  # no per-step sync: the last step's read-back found it
    assert all(torch.equal(a, b) for a, b in zip(clean.state_dict().values(), model.state_dict().values()))


def test_device_side_guard_stops_before_the_next_checkpoint(synthetic, tmp_path, monkeypatch):
    _device_guarded(monkeypatch)
    ckpt = Checkpointer(tmp_path / "ckpt", every=2, keep=3, fingerprint="f")
    _, seen, err = _run(synthetic, 10, poison_at=5, checkpointer=ckpt)
    assert str(err) == (f"training loss is nan at step 5; lower the learning rate; "
                        f"the last good checkpoint {tmp_path / 'ckpt' / 'step-00000004'} is kept")
    assert seen == list(range(6))  # step 5 ends at a checkpoint step: read back there
    assert sorted(p.name for p in ckpt.directory.iterdir()) == ["step-00000002", "step-00000004"]


def test_device_side_guard_catches_an_infinite_gradient_behind_a_finite_loss(synthetic, monkeypatch):
    _device_guarded(monkeypatch)
    tokenizer, path = synthetic
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in OBJECTIVES["clm"].build_model(TINY, tokenizer).state_dict().items()}

    data, objective = PretrainData(path, "train"), CausalLMTraining()
    torch.manual_seed(0)
    model = OBJECTIVES["clm"].build_model(TINY, tokenizer)
    with pytest.raises(FloatingPointError, match="gradient norm is (inf|nan) at step 0"):
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), 3,
            lambda s, m: objective.prepare(data.batch(np.arange(4), torch.device("cpu")), torch.Generator()),
            lambda m, b: objective.forward(m, b)["loss"] + inf_grad(m.transformer.wte.weight))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_phase_over_the_budget_is_an_error_and_the_json_line_still_comes_out():
    """In its own process: a phase cut short mid-import must not leave this one half-imported."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--budget-s", "0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["device"] == "cpu"
    assert set(report["errors"]) == {f"{p}:{o}" for p in ("train", "resume") for o in gpu_check.OBJECTIVES}
    assert all(e.startswith("OutOfTime: out of the time budget") for e in report["errors"].values())
