"""Checkpoints on shared storage (LMFORGE_CHECKPOINT_STORE): a stage moved to another
worker resumes from the newest checkpoint any worker wrote; pruning keeps this run's own."""
from __future__ import annotations

import json

import torch

from components.train.checkpoint import Checkpointer


def _model_and_opt(value: float):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    return model, torch.optim.AdamW(model.parameters())


def test_a_new_worker_resumes_from_the_store(tmp_path):
    store = tmp_path / "store"
    first = Checkpointer(tmp_path / "worker-a" / "clm", every=10, keep=2, fingerprint="run-1", store=store)
    for step in (10, 20, 30):
        first.save(step, *_model_and_opt(float(step)), state={"seen": step})
    stored = sorted(p.name for p in (store / "clm-run-1").iterdir())
    assert stored == ["step-00000020", "step-00000030"]  # pruned like the local directory

    # Another worker: an empty clone, the same store.
    second = Checkpointer(tmp_path / "worker-b" / "clm", every=10, keep=2, fingerprint="run-1", store=store)
    assert second.latest() == tmp_path / "worker-b" / "clm" / "step-00000030"
    model, opt = _model_and_opt(0.0)
    step, state = second.restore(model, opt)
    assert (step, state) == (30, {"seen": 30}) and float(model.weight[0, 0]) == 30.0


def test_the_store_wins_only_when_newer_and_only_for_the_same_run(tmp_path):
    store = tmp_path / "store"
    here = Checkpointer(tmp_path / "w" / "mlm", every=10, keep=2, fingerprint="run-1", store=store)
    here.save(40, *_model_and_opt(4.0), state={})
    elsewhere = Checkpointer(tmp_path / "v" / "mlm", every=10, keep=2, fingerprint="run-1", store=store)
    elsewhere.save(20, *_model_and_opt(2.0), state={})  # an older step, written later
    assert here.latest().name == "step-00000040"  # the local one is newer: no copy
    other_run = Checkpointer(tmp_path / "u" / "mlm", every=10, keep=2, fingerprint="run-2", store=store)
    assert other_run.latest() is None  # other params: nothing to resume


def test_an_older_runs_higher_steps_do_not_push_out_this_runs_checkpoint(tmp_path):
    directory = tmp_path / "clm"
    old = Checkpointer(directory, every=100, keep=2, fingerprint="old")
    for step in (200, 300):
        old.save(step, *_model_and_opt(1.0), state={})
    new = Checkpointer(directory, every=10, keep=2, fingerprint="new")
    saved = new.save(10, *_model_and_opt(2.0), state={})
    assert saved.exists() and new.latest() == saved
    kept = {p.name: json.loads((p / "state.json").read_text())["fingerprint"] for p in directory.iterdir()}
    assert kept == {"step-00000010": "new"}  # the old run's are gone, never resumable
