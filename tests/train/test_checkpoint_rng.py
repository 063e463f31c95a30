"""Resume is exact on every device: a checkpoint holds the CPU and every CUDA generator, and a
run stopped and resumed draws the same dropout masks, so it logs the same losses, as one
that never stopped. (tests/test_resume.py does the same through kill -9 and the CLI.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import ModelConfig, OptimConfig, PretrainConfig
from components.objectives import OBJECTIVES
from components.train.checkpoint import Checkpointer
from components.train.loop import fit

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.2)
STEPS, STOP_AT = 8, 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(clm, device: str, checkpointer: Checkpointer | None = None, stop_at: int | None = None) -> list[float]:
    """Per-step training losses of a dropout-heavy model; with `stop_at`, stop (and checkpoint) there."""
    tokenizer, data = clm
    torch.manual_seed(0)  # same initial weights and generators in every run, as a rerun of the stage has
    model = OBJECTIVES["clm"].build_model(TINY, tokenizer).to(device)
    objective = OBJECTIVES["clm"].training(tokenizer, PretrainConfig(mlm_probability=0.15))
    losses: list[float] = []

    def next_batch(step, micro):
        return objective.prepare(data.batch(np.arange(4) + step, torch.device(device)), torch.Generator())

    fit(model, OptimConfig(lr=1e-3, batch_size=4, device=device, dtype="float32"), STEPS, next_batch,
        lambda m, b: objective.forward(m, b)["loss"], evaluate=lambda step: step == stop_at,
        eval_every=stop_at or 0, on_log=lambda step, m: losses.append(m["train_loss"]), log_every=1,
        checkpointer=checkpointer)
    return losses


def _stopped_and_resumed(clm, device: str, directory) -> list[float]:
    ckpt = Checkpointer(directory, every=STOP_AT, keep=2, fingerprint="f")
    first = _losses(clm, device, ckpt, stop_at=STOP_AT)
    assert len(first) == STOP_AT and ckpt.latest().name == f"step-{STOP_AT:08d}"
    return first + _losses(clm, device, ckpt)


def test_checkpoint_holds_the_rng_state_of_every_device(clm, tmp_path):
    _losses(clm, "cpu", Checkpointer(tmp_path, every=STOP_AT, keep=1, fingerprint="f"), stop_at=STOP_AT)
    saved = torch.load(tmp_path / f"step-{STOP_AT:08d}" / "trainer.pt", weights_only=True)
    assert saved["torch_rng"].dtype == torch.uint8
    # Every CUDA device's generator once CUDA is in use (before that they are still at the seed).
    assert len(saved["cuda_rng"]) == (torch.cuda.device_count() if torch.cuda.is_initialized() else 0)
    assert all(s.dtype == torch.uint8 for s in saved["cuda_rng"])


def test_resumed_cpu_run_draws_the_same_dropout_as_an_uninterrupted_one(clm, tmp_path):
    straight = _losses(clm, "cpu")
    resumed = _stopped_and_resumed(clm, "cpu", tmp_path)
    assert resumed == straight  # bit for bit: same weights, same data, same masks
    assert len(set(straight)) == STEPS  # dropout really is on (no two steps alike)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resumed_cuda_run_draws_the_same_dropout_as_an_uninterrupted_one(clm, tmp_path):
    straight = _losses(clm, "cuda")
    resumed = _stopped_and_resumed(clm, "cuda", tmp_path)
    saved = torch.load(tmp_path / f"step-{STOP_AT:08d}" / "trainer.pt", weights_only=True)
    assert len(saved["cuda_rng"]) == torch.cuda.device_count()
    # Masks come from the CUDA generator here. The first resumed step is bit-exact; later ones
    # may differ in the last bits where attention's backward accumulates with atomics.
    assert resumed[STOP_AT] == straight[STOP_AT]
    assert resumed == pytest.approx(straight, rel=1e-5, abs=1e-6)
