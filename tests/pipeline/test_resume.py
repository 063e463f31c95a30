"""Kill -9 during pretraining, rerun: it resumes from the last checkpoint and ends exactly
where an uninterrupted run ends; torchrun with 2 processes matches one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components import paths
from conftest import ROOT
from components.objectives import OBJECTIVES
from components.config import TokenizeConfig, TokenizerConfig
from components.tokens.tokenization import load_tokenizer, tokenize_corpus

pytestmark = pytest.mark.slow
PARAMS = """profile: tiny
seed: 7
objectives: [{objective}]
pretrain: {{dropout: {dropout}, max_steps: {steps}, checkpoint_every: 4, eval_every: 4, log_every: 1, batch_size: 8, dtype: float32, nproc_per_node: {nproc}}}
"""


def prepare(workdir: Path, steps: int, dropout: float = 0.1, nproc: int = 1, objective: str = "clm") -> Path:
    """A workspace with a real tokenizer and tokenized data, as the earlier stages leave it."""
    import argparse, collections, json as js, pathlib, textwrap, functools, typing  # noqa: E401

    texts = [m.__doc__ for m in (argparse, collections, js, pathlib, textwrap, functools, typing) if m.__doc__] * 4
    spec = OBJECTIVES[objective]
    tok_dir = workdir / paths.tokenizer_dir(spec.architecture.name)
    spec.architecture.train_tokenizer(texts, TokenizerConfig(vocab_size=400, min_frequency=1), tok_dir)
    tokenize_corpus(spec, load_tokenizer(tok_dir), {"train": texts, "validation": texts[:3]},
                    TokenizeConfig(block_size=32), 0, workdir / paths.tokenized_dir(objective))
    (workdir / "params.yaml").write_text(PARAMS.format(steps=steps, dropout=dropout, nproc=nproc, objective=objective))
    return workdir


def env(workdir: Path) -> dict:
    e = os.environ.copy()
    e["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    e["PYTHONPATH"] = str(ROOT)
    e["OMP_NUM_THREADS"] = "1"  # two ranks on two cores must not oversubscribe
    return e


def run_pretrain(workdir: Path, objective: str = "clm", **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", "--objective", objective], cwd=workdir,
                            env=env(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def run_bounded(workdir: Path, objective: str, timeout: float) -> tuple[str, int]:
    """Run the stage; past `timeout`, every process in its group (torchrun's workers too)
    prints its Python stacks (faulthandler, on SIGABRT) before it dies, so a hang says where."""
    e = env(workdir)
    e["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", "--objective", objective], cwd=workdir,
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return proc.communicate(timeout=timeout)[0], proc.returncode
    except subprocess.TimeoutExpired:
        import psutil  # torchrun starts its workers in sessions of their own: walk the tree

        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for p in tree:
            p.send_signal(signal.SIGABRT)
        time.sleep(3)
        for p in tree:
            if p.is_running():
                p.kill()
        out = proc.communicate()[0]
        pytest.fail(f"{objective} pretraining hung past {timeout}s; stacks of every process:\n{out[-20000:]}")


def result(workdir: Path, objective: str = "clm") -> tuple[dict, list[str]]:
    metrics = json.loads((workdir / paths.PRETRAIN_REPORTS / objective / "metrics.json").read_text())
    curve = (workdir / paths.PRETRAIN_REPORTS / objective / "train_loss.csv").read_text().splitlines()
    return metrics, curve


@pytest.mark.parametrize("objective", ["clm", "rtd"])
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, objective):
    """rtd too: its generator samples from the batch's own uniforms, so a resumed run draws
    the same replacements."""
    steps = 24
    straight = prepare(tmp_path / "straight", steps, objective=objective)
    proc = run_pretrain(straight, objective)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]

    crashed = prepare(tmp_path / "crashed", steps, objective=objective)
    proc = run_pretrain(crashed, objective, start_new_session=True)
    ckpt_dir = crashed / paths.checkpoint_dir(objective)
    deadline = time.time() + 240
    while time.time() < deadline and not any(ckpt_dir.glob("step-00000008")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, no chance to clean up
    proc.wait()
    assert not (crashed / paths.pretrained_dir(objective)).exists(), "killed before the end, no final model"
    saved = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))
    a, curve_a = result(straight, objective)
    assert saved and int(saved[-1].split("-")[1]) < a["steps"]

    proc = run_pretrain(crashed, objective)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from" in out
    b, curve_b = result(crashed, objective)
    assert b["resumed_from"] >= 8
    assert abs(a["val_loss"] - b["val_loss"]) <= 1e-6
    assert curve_a == curve_b  # every logged training loss, before and after the crash
    assert not list(ckpt_dir.glob(".tmp-*"))  # no half-written checkpoint left behind


def test_changed_params_never_resume_a_stale_checkpoint(tmp_path):
    work = prepare(tmp_path, 8)
    assert run_pretrain(work).wait(timeout=300) == 0
    (work / "params.yaml").write_text(PARAMS.format(steps=12, dropout=0.1, nproc=1, objective="clm"))
    proc = run_pretrain(work)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "resuming from" not in out
    assert result(work)[0]["steps"] == 12 and result(work)[0]["resumed_from"] == 0


# One tolerance for every objective: relative, on the validation loss and on every logged
# training loss. Float summation order is all 2 processes may change.
PARITY_RTOL = 1e-4


@pytest.mark.parametrize("objective", ["clm", "mlm", "mlm_nsp", "rtd"])
def test_torchrun_two_processes_match_one_process(tmp_path, objective):
    """Same global batch (masks drawn for the whole of it), gloo on CPU, no dropout: each rank
    divides its loss by the global masked count, so the gradients DDP averages add up to the
    single-process gradient, and the logged loss is the mean over both ranks."""
    single = prepare(tmp_path / "one", 8, dropout=0.0, nproc=1, objective=objective)
    double = prepare(tmp_path / "two", 8, dropout=0.0, nproc=2, objective=objective)
    for work in (single, double):
        out, code = run_bounded(work, objective, timeout=240)  # ~15 s each on 2 cores
        assert code == 0, out[-3000:]
    (a, curve_a), (b, curve_b) = result(single, objective), result(double, objective)
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert np.isfinite(b["val_loss"])
    assert abs(a["val_loss"] - b["val_loss"]) <= PARITY_RTOL * a["val_loss"], (a["val_loss"], b["val_loss"])
    losses_a = np.array([float(line.split(",")[1]) for line in curve_a[1:]])
    losses_b = np.array([float(line.split(",")[1]) for line in curve_b[1:]])
    np.testing.assert_allclose(losses_b, losses_a, rtol=PARITY_RTOL)
