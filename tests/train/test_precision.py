"""bf16 autocast must not change what fine-tuning learns: the classifier head runs in fp32.

BERT's classifier reads the pooler (tanh on [CLS]); NSP pretraining saturates it. In bf16 a
saturated tanh output rounds to exactly +-1 and its backward (1 - y^2) passes exactly zero
gradient, so the pooler and the encoder behind it stop learning (docs/TRAINING.md, Precision).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from components.config import ModelConfig
from components.objectives import ARCHITECTURES
from components.train.models import fp32_head

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SMALL = ModelConfig(n_layers=2, n_heads=4, d_model=64, d_ff=128, max_positions=32, dropout=0.0)
TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)  # the tiny profile's shape


def _classifier(architecture: str, tokenizer, saturate: float = 1.0):
    """A small classifier; `saturate` scales BERT's pooler weights, as NSP pretraining grows them."""
    torch.manual_seed(0)
    model = ARCHITECTURES[architecture].build_classifier(SMALL, tokenizer, ["a", "b", "c", "d", "e"], None)
    if architecture == "bert":
        with torch.no_grad():
            model.bert.pooler.dense.weight.mul_(saturate)
    return model.eval()


def _gradients(model, head, dtype) -> tuple[dict, torch.Tensor]:
    """(parameter gradients, the pooled output) of one batch's loss under `dtype` autocast."""
    torch.manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (16, 20))
    labels = torch.randint(0, 5, (16,))
    model.zero_grad()
    with fp32_head(model, head, CPU, dtype), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(input_ids=ids).logits
        pooled = model.bert.pooler(model.bert(input_ids=ids).last_hidden_state) if hasattr(model, "bert") else logits
    F.cross_entropy(logits.float(), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, pooled.detach()


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_a_saturated_pooler_passes_the_same_gradient_in_bf16_as_in_fp32(bert_tokenizer):
    # x100: most pooled units are beyond tanh's last bf16 step below 1 (|y| > 0.998).
    model = _classifier("bert", bert_tokenizer, saturate=100.0)
    head = ARCHITECTURES["bert"].classifier_head
    fp32, _ = _gradients(model, head, torch.float32)
    bf16, pooled = _gradients(model, head, torch.bfloat16)
    assert float((pooled.float().abs() > 0.998).float().mean()) > 0.5  # the set-up saturates
    for name in ("bert.pooler.dense.bias", "bert.encoder.layer.1.output.dense.weight",
                 "bert.embeddings.word_embeddings.weight"):
        zeros = float((bf16[name] == 0).float().mean() - (fp32[name] == 0).float().mean())
        assert zeros < 0.01, f"{name}: {zeros:.1%} more exact-zero gradients in bf16 than in fp32"
        assert _gap(bf16[name], fp32[name]) < 0.05, f"{name}: bf16 gradient {_gap(bf16[name], fp32[name]):.3f} from fp32"


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_the_head_runs_in_fp32_only_inside_the_context(architecture, request):
    tokenizer = request.getfixturevalue(f"{architecture}_tokenizer")
    model = _classifier(architecture, tokenizer)
    head = ARCHITECTURES[architecture].classifier_head
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with fp32_head(model, head, CPU, torch.bfloat16), fp32_head(model, head, CPU, torch.bfloat16):
            assert model(input_ids=ids).logits.dtype == torch.float32
        assert model(input_ids=ids).logits.dtype == torch.bfloat16  # restored: the wrapper is gone
    assert all("forward" not in vars(model.get_submodule(p)) for p in head)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("architecture,saturate,seeds", [
    ("bert", 100.0, range(4)),  # as MLM+NSP pretraining leaves it: a saturated pooler
    ("bert", 1.0, range(2)),    # as MLM leaves it
    ("gpt2", 1.0, range(2)),    # CLM: a linear score head
])
def test_bf16_and_fp32_fine_tuning_reach_the_same_validation_macro_f1(architecture, saturate, seeds, request):
    # The toy task is separable: a run that learns reaches 1.0, one that does not stays at
    # chance (~0.33). 0.1 is three validation examples of 32 (bf16 rounding may flip one or
    # two), far below that 0.67 gap. Today's bf16 head leaves seed 1 of the saturated BERT at chance.
    # 8 epochs: at 4, runs sat at the edge of convergence (one thread, Intel Xeon with AMX:
    # seed 2's bf16 run at 0.84 beside fp32's 1.0, seed 7 at chance in both); at 6, 8 and 12
    # every one of seeds 0-7 reached 1.0 in both precisions there. On that CPU a bf16 head
    # learns this task too (seeds 0-7, 4 and 8 epochs): there the gradient test above is the
    # one that catches a saturated bf16 pooler.
    from tests.evaluate.test_evaluation import _cfg, _toy_task
    from components.train.finetuning import finetune

    spec = ARCHITECTURES[architecture]
    tokenizer = spec.prepare_classifier_tokenizer(copy.deepcopy(request.getfixturevalue(f"{architecture}_tokenizer")), 16)
    for seed in seeds:
        best = {}
        for dtype in ("float32", "bfloat16"):
            torch.manual_seed(seed)
            model = spec.build_classifier(TINY, tokenizer, ["serialise", "filesystem"], None)
            if architecture == "bert":
                with torch.no_grad():
                    model.bert.pooler.dense.weight.mul_(saturate)
            result = finetune(model, tokenizer, _toy_task(64, 0), _toy_task(32, 1), 2,
                              _cfg(epochs=8, patience=10, dtype=dtype), seed=seed, head=spec.classifier_head)
            best[dtype] = result["val_macro_f1"]
        assert best["float32"] >= 0.9, f"seed {seed}: fp32 did not learn the task ({best})"
        assert abs(best["bfloat16"] - best["float32"]) <= 0.1, f"seed {seed}: {best}"
