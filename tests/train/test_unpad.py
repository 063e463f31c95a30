"""Unpadded fine-tuning (components/train/unpad.py): the padded model's logits and gradients
from the real tokens alone, and the fine-tuning step that runs it."""
from __future__ import annotations

import copy
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from components.config import FinetuneConfig, ModelConfig
from components.objectives import ARCHITECTURES
from components.train.finetuning import collate, training_step
from components.train.unpad import classifier_logits, pack

CPU = torch.device("cpu")
TINY = ModelConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.0)
LABELS = ["a", "b", "c"]
TEXTS = ["def f(x): return x", "Return the sum of the numbers given, in order.", "a",
         "Open the file at path and read every line of it into a list of strings.", "x = 1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["bert", "gpt2"])
def classifier(request, bert_tokenizer, gpt2_tokenizer):
    arch = ARCHITECTURES[request.param]
    shared = {"bert": bert_tokenizer, "gpt2": gpt2_tokenizer}[request.param]
    tokenizer = arch.prepare_classifier_tokenizer(copy.deepcopy(shared), 32)
    torch.manual_seed(0)
    model = arch.build_classifier(TINY, tokenizer, LABELS, None)
    batch = collate(tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"], tokenizer.pad_token_id, CPU)
    assert (batch["attention_mask"] == 0).any()  # the test needs padding to leave out
    return model, tokenizer, batch, arch.unpadded_logits


def _grads(model, logits):
    model.zero_grad()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_same_logits_and_gradients_as_the_padded_forward(classifier):
    model, _, batch, forward = classifier
    model.train()  # dropout 0: training mode, deterministic
    padded = model(**batch).logits
    unpadded = classifier_logits(model, batch, forward, cheap_dropout_on_cpu=True)
    assert torch.allclose(unpadded, padded, atol=1e-5), (unpadded - padded).abs().max()
    want, got = _grads(model, padded), _grads(model, classifier_logits(model, batch, forward, True))
    assert want.keys() == got.keys()
    scale = max(g.abs().max() for g in want.values())
    for name in want:  # relative to the largest gradient: a key bias's true gradient is 0 (softmax is shift-invariant)
        assert (got[name] - want[name]).abs().max() <= 1e-4 * scale, name
    assert model.config._attn_implementation == "sdpa"  # restored: saved models and evaluation see SDPA


def test_runs_on_real_tokens_only(classifier):
    model, _, batch, forward = classifier
    ids, positions, packing = pack(batch, causal=False, cheap_dropout_on_cpu=True)
    lengths = batch["attention_mask"].sum(1)
    assert ids.shape == (1, int(lengths.sum())) and not (ids == batch["input_ids"][0, -1]).all()
    assert positions[0, : int(lengths[0])].tolist() == list(range(int(lengths[0])))
    assert packing.first.tolist() == [0, *lengths.cumsum(0)[:-1].tolist()]
    assert torch.equal(ids[0, packing.last], batch["input_ids"][torch.arange(5), lengths - 1])


def test_dropout_draws_in_the_packed_row_and_attention(classifier, bert_tokenizer):
    model, _, batch, forward = classifier
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.config.attention_probs_dropout_prob = model.config.attn_pdrop = 0.5
    model.train()
    torch.manual_seed(0)
    a = classifier_logits(model, batch, forward, True)
    b = classifier_logits(model, batch, forward, True)
    torch.manual_seed(0)
    assert torch.equal(classifier_logits(model, batch, forward, True), a) and not torch.equal(a, b)  # seeded, and drawn
    model.eval()
    assert torch.allclose(classifier_logits(model, batch, forward, True), model(**batch).logits, atol=1e-5)


def test_left_padding_is_refused(classifier):
    model, _, batch, forward = classifier
    flipped = {k: v.flip(1) for k, v in batch.items()}
    with pytest.raises(ValueError, match="right-padded.*finetune.unpad: false"):
        classifier_logits(model, flipped, forward, True)


def test_bf16_autocast_step_matches_the_padded_one(classifier):
    model, _, batch, forward = classifier
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = model(**batch).logits.float()
        unpadded = classifier_logits(model, batch, forward, True).float()
    assert torch.allclose(unpadded, padded, atol=0.05), (unpadded - padded).abs().max()


@pytest.mark.parametrize("unpad,given", [(False, True), (True, True), (True, False)])
def test_the_fine_tuning_step_follows_finetune_unpad(classifier, unpad, given, monkeypatch):
    model, tokenizer, _, forward = classifier
    calls = []
    monkeypatch.setattr("components.train.finetuning.classifier_logits",
                        lambda *a: calls.append(1) or classifier_logits(*a))
    train = pd.DataFrame({"text": TEXTS, "label": [0, 1, 2, 0, 1]})
    cfg = FinetuneConfig(device="cpu", dtype="float32", batch_size=5, max_length=32, unpad=unpad)
    step = training_step(tokenizer, train, 3, cfg, 0, CPU, forward if given else None)
    batch = step.next_batch(0, 0)
    loss = step.loss_fn(model, batch)
    padded = training_step(tokenizer, train, 3, replace(cfg, unpad=False), 0, CPU, forward)
    assert torch.allclose(loss, padded.loss_fn(model, batch), atol=1e-5)
    assert calls == ([1] if unpad and given else [])  # no architecture forward given: the padded one
