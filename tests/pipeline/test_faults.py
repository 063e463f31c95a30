"""Faults a run must survive or refuse clearly: a full disk while checkpointing, a NaN or inf
loss, an unreachable MLflow server, and temporaries left behind by a killed writer.
docs/RELIABILITY.md lists each with the behaviour these tests check."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.train.checkpoint import Checkpointer
from components.io import DiskFullError, atomic_dir, write_json_atomic, write_text_atomic
from components.objectives import OBJECTIVES
from components.config import ModelConfig, OptimConfig, PretrainConfig
from components.train.loop import fit
from conftest import inf_grad

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)
CPU = {"device": "cpu", "dtype": "float32"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(clm, poison_at: int | None = None, value: float = float("nan")):
    """(model, next_batch, loss_fn) on real data; the loss is multiplied by `value` at `poison_at`."""
    tokenizer, data = clm
    torch.manual_seed(0)
    model = OBJECTIVES["clm"].build_model(TINY, tokenizer)
    objective = OBJECTIVES["clm"].training(tokenizer, PretrainConfig())

    def next_batch(step, micro):
        return objective.prepare(data.batch(np.arange(4) + step, torch.device("cpu")), torch.Generator())

    calls = [0]

    def loss_fn(m, batch):
        loss = objective.forward(m, batch)["loss"]
        calls[0] += 1  # one call per step (no gradient accumulation here)
        return loss * value if calls[0] == (poison_at or 0) + 1 and poison_at is not None else loss

    return model, next_batch, loss_fn


def _state(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# A full disk while writing a checkpoint.

def _fill_on_save(monkeypatch, after: int):
    """safetensors' save raises ENOSPC (as it words it) from the `after`-th call on."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    real, calls = st.save_model, [0]

    def save_model(model, filename, *a, **kw):
        calls[0] += 1
        if calls[0] > after:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(model, filename, *a, **kw)

    monkeypatch.setattr(st, "save_model", save_model)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_says_so(clm, tmp_path, monkeypatch):
    model, next_batch, loss_fn = _trainer(clm)
    ckpt = Checkpointer(tmp_path / "ckpt", every=2, keep=2, fingerprint="f")
    _fill_on_save(monkeypatch, after=1)  # step 2 saves, step 4 finds the disk full
    with pytest.raises(DiskFullError) as err:
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), 6, next_batch, loss_fn, checkpointer=ckpt)
    message = str(err.value)
    assert "disk full while writing" in message and str(tmp_path / "ckpt" / "step-00000004") in message
    assert f"the previous checkpoint {tmp_path / 'ckpt' / 'step-00000002'} is intact" in message
    assert "\n" not in message and err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000002"]  # no temporary left
    monkeypatch.undo()
    # The kept checkpoint is whole: a fresh run resumes from it.
    model2, next_batch, loss_fn = _trainer(clm)
    result = fit(model2, OptimConfig(lr=1e-3, batch_size=4, **CPU), 4, next_batch, loss_fn, checkpointer=ckpt)
    assert result["resumed_from"] == 2 and result["steps"] == 4


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 256 KiB file system (needs root and tmpfs); skipped where mount is not allowed."""
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_on_a_real_file_system(clm, small_tmpfs):
    """No injection: torch.save and safetensors fail as they do on a full disk (torch.save's
    error does not mention space, so the check asks the file system)."""
    tokenizer, _ = clm
    ckpt = Checkpointer(small_tmpfs / "ckpt", every=1, keep=2, fingerprint="f")
    small = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(small.parameters())
    first = ckpt.save(1, small, opt, {})
    before = _state(first)
    big = torch.nn.Linear(256, 256)  # 256 KiB of float32 weights: does not fit
    with pytest.raises(DiskFullError, match=r"disk full while writing .*step-00000002.*the previous checkpoint .*"
                                            r"step-00000001 is intact"):
        ckpt.save(2, big, torch.optim.AdamW(big.parameters()), {})
    assert sorted(p.name for p in ckpt.directory.iterdir()) == ["step-00000001"]
    assert _state(first) == before
    write_json_atomic(small_tmpfs / "metrics.json", {"ok": 1})
    with pytest.raises(DiskFullError, match="the previous .*metrics.json is intact"):
        write_text_atomic(small_tmpfs / "metrics.json", "x" * 400_000)
    assert (small_tmpfs / "metrics.json").read_text() == '{\n  "ok": 1\n}\n'
    assert not [p for p in small_tmpfs.iterdir() if p.name.startswith(".")]


def test_full_disk_in_an_atomic_directory_keeps_the_old_one(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "w.bin").write_bytes(b"old")
    with pytest.raises(DiskFullError, match=rf"disk full while writing {out} .*the previous {out} is intact"):
        with atomic_dir(out) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# A NaN or inf loss.

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_loss_stops_training_and_keeps_the_last_good_checkpoint(clm, tmp_path, value):
    model, next_batch, loss_fn = _trainer(clm, poison_at=5, value=value)
    ckpt = Checkpointer(tmp_path / "ckpt", every=2, keep=2, fingerprint="f")
    with pytest.raises(FloatingPointError) as err:
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), 10, next_batch, loss_fn, checkpointer=ckpt)
    message = str(err.value)
    assert f"training loss is {value} at step 5" in message
    assert f"the last good checkpoint {tmp_path / 'ckpt' / 'step-00000004'} is kept" in message
    saved = sorted(p.name for p in ckpt.directory.iterdir())
    assert saved == ["step-00000002", "step-00000004"]  # nothing written after the bad step
    from safetensors.torch import load_file

    weights = load_file(ckpt.directory / "step-00000004" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_an_infinite_gradient_with_a_finite_loss_never_reaches_the_weights(clm):
    model, next_batch, _ = _trainer(clm)
    tokenizer, _ = clm
    objective = OBJECTIVES["clm"].training(tokenizer, PretrainConfig())

    def loss_fn(m, batch):  # a finite loss whose gradient is infinite
        return objective.forward(m, batch)["loss"] + inf_grad(m.transformer.wte.weight)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="gradient norm is (inf|nan) at step 0"):
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), 3, next_batch, loss_fn)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_nan_loss_in_the_pretrain_stage_is_one_line_exit_1(tmp_path):
    """The stage with a learning rate so large the loss diverges: exit 1, one line that says
    which step and which checkpoint is kept, no final model."""
    from test_resume import env, prepare

    work = prepare(tmp_path, steps=40)
    params = (work / "params.yaml").read_text().replace("batch_size: 8,", "batch_size: 8, lr: 1.0e+30, grad_clip: 0.0,")
    (work / "params.yaml").write_text(params)
    proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain", "--objective", "clm"], cwd=work,
                          env={**env(work), "LMFORGE_DEBUG": ""}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pretrain: ") and ("training loss is" in last or "gradient norm is" in last)
    assert "lower the learning rate" in last
    assert not (work / "models").exists()


# The MLflow tracking server unreachable.

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.slow
def test_unreachable_mlflow_server_bounded_retries_then_one_line_exit_75(tmp_path):
    """pretrain opens its MLflow run before training: a server that is down fails the stage
    after the configured retries, before any compute, rather than training without metrics."""
    from test_resume import env, prepare

    work = prepare(tmp_path, steps=8)
    uri = f"http://127.0.0.1:{_closed_port()}"
    run_env = {**env(work), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "LMFORGE_DEBUG": ""}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.pretrain", "--objective", "clm"], cwd=work,
                          env=run_env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 75, proc.stderr[-2000:]  # EX_TEMPFAIL: the flow retries it
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert lines == [proc.stderr.strip().splitlines()[-1]]
    assert lines[0] == (f"error: pretrain: MLflow tracking server {uri} unreachable after 2 retries "
                        "(Connection refused); start it or fix MLFLOW_TRACKING_URI (retries: "
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES); nothing was logged past this point")
    assert seconds < 60  # bounded: MLflow's own defaults would retry for minutes
    assert not (work / "models").exists() and not (work / "checkpoints").exists()


@pytest.mark.slow
def test_metrics_are_not_dropped_when_the_server_goes_away_mid_run(tmp_path, monkeypatch):
    """log_metrics is synchronous and raises: a stage never carries on without its metrics."""
    import mlflow

    from components.registry import tracking

    down = f"http://127.0.0.1:{_closed_port()}"
    # Before any mlflow.set_tracking_uri, which writes this variable too: set after it,
    # monkeypatch would restore the URI mlflow wrote, not the session's (issue 13).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            mlflow.set_tracking_uri(down)  # the server "goes away" under the open run
            with pytest.raises(mlflow.exceptions.MlflowException) as err:
                tracking.log_metrics({"train_loss": 1.0}, step=1)
            assert tracking.unreachable_server(err.value).startswith(f"MLflow tracking server {down} unreachable")
            mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    finally:
        mlflow.set_tracking_uri(None)


# Temporaries of a killed writer.

def test_temporaries_of_a_dead_writer_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".model.tmp-{dead.pid}-abc", tmp_path / f".model.old-{dead.pid}",
             tmp_path / "ckpt" / f".tmp-{dead.pid}-xyz"]
    for path in stale:
        path.mkdir(parents=True)
        (path / "half.bin").write_bytes(b"\0" * 10)
    (tmp_path / f".m.json.tmp-{dead.pid}-q").write_text("{")
    live = tmp_path / f".model.tmp-{os.getpid()}-mine"  # a live writer's is left alone
    live.mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("ok")
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    Checkpointer(tmp_path / "ckpt", every=1, keep=1, fingerprint="f").save(
        1, torch.nn.Linear(2, 2), torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()), {})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["model", "m.json", "ckpt", live.name])
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-00000001"]
    shutil.rmtree(live)
