"""Exact DDP without launching it: each rank's share of the loss, the per-rank dropout seed and
the per-rank RNG state in checkpoints (the 2-process run itself is in test_resume.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import ModelConfig, PretrainConfig, TokenizeConfig
from components.objectives import OBJECTIVES
from components.tokens.tokenization import tokenize_corpus
from components.train import distributed
from components.train.checkpoint import Checkpointer, rng_states
from components.train.pretraining import PretrainData, _batches, _Trainable
from conftest import _prose

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.0)
pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(trainable: torch.nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    """The gradient DDP would hold: the mean over ranks of each rank's gradient."""
    total = None
    for batch in batches:
        trainable.zero_grad(set_to_none=True)
        trainable(batch).backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainable.parameters()]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    return [g / len(batches) for g in total]


def _masked(batch: dict) -> int:
    return int((batch["labels"] != -100).sum())


@pytest.mark.parametrize("objective", ["mlm", "mlm_nsp", "clm", "rtd"])
def test_two_ranks_average_to_the_single_process_gradient(tmp_path, bert_tokenizer, gpt2_tokenizer, objective):
    spec = OBJECTIVES[objective]
    tokenizer = bert_tokenizer if spec.architecture.name == "bert" else gpt2_tokenizer
    docs = _prose()
    tokenize_corpus(spec, tokenizer, {"train": docs, "validation": docs[:4]}, TokenizeConfig(block_size=32), 0,
                    tmp_path)
    cfg = PretrainConfig(batch_size=8, device="cpu", dtype="float32")
    training = spec.training(tokenizer, cfg)
    torch.manual_seed(0)
    trainable = _Trainable(spec.build_model(TINY, tokenizer), training)
    train = PretrainData(tmp_path, "train")
    ranks = [_batches(training, train, cfg, 3, torch.device("cpu"), r, 2) for r in (0, 1)]
    # A step where the ranks drew unequal masked counts: there a mean of the ranks' means is wrong.
    step = next(s for s in range(8) if objective == "clm" or len({_masked(r(s, 0)) for r in ranks}) == 2)
    one = _grads(trainable, [_batches(training, train, cfg, 3, torch.device("cpu"), 0, 1)(step, 0)])
    two = _grads(trainable, [r(step, 0) for r in ranks])
    for a, b in zip(one, two):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_each_rank_draws_its_own_dropout_and_rank_0_the_single_process_masks():
    drop = torch.nn.Dropout(0.5)
    masks = []
    for rank in (0, 1):
        distributed.seed_rank(7, rank)
        masks.append(drop(torch.ones(256)))
    torch.manual_seed(7)
    assert torch.equal(masks[0], drop(torch.ones(256)))
    assert not torch.equal(masks[0], masks[1])


def test_checkpoint_restores_each_ranks_own_rng_state(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    states = []
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        states.append(rng_states())
    ckpt = Checkpointer(tmp_path, every=1, keep=1, fingerprint="f")
    ckpt.save(1, model, optimizer, {}, states)
    expected = {}
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        expected[rank] = torch.rand(4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        torch.manual_seed(0)
        ckpt.restore(model, optimizer)
        assert torch.equal(torch.rand(4), expected[rank])
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    with pytest.warns(UserWarning, match="written by 2 process"):
        ckpt.restore(model, optimizer)
    assert torch.equal(torch.rand(4), expected[0])
    np.testing.assert_equal(len(torch.load(tmp_path / "step-00000001" / "trainer.pt", weights_only=True)["rank_rng"]), 2)
