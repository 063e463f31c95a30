"""The shared training loop and the three pretraining objectives, on a 1-layer model on CPU."""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.objectives import OBJECTIVES
from components.config import ModelConfig
from components.config import TokenizeConfig
from components.tokens.tokenization import tokenize_corpus
from components.config import OptimConfig
from components.train.loop import fit, lr_at, make_optimizer, resolve_device_dtype
from components.config import PretrainConfig
from components.train.pretraining import PretrainData, pretrain
from conftest import _prose

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)
CPU = {"device": "cpu", "dtype": "float32"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, gpt2_tokenizer, bert_tokenizer):
    """Real tokenized arrays (32-token blocks of stdlib docstrings) per objective."""
    root = tmp_path_factory.mktemp("tokenized")
    tokenizers = {"gpt2": gpt2_tokenizer, "bert": bert_tokenizer}
    docs = _prose()
    out = {}
    for objective, spec in OBJECTIVES.items():
        arch = spec.architecture.name
        splits = {"train": docs, "validation": docs[:6]}
        tokenize_corpus(OBJECTIVES[objective], tokenizers[arch], splits, TokenizeConfig(block_size=32), 0, root / objective)
        out[objective] = (tokenizers[arch], root / objective)
    return out


def _model(objective: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    return OBJECTIVES[objective].build_model(TINY, tokenizer)


def test_lr_schedule_endpoints():
    cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 100) == pytest.approx(1e-3)  # warmup ends at the peak
    assert lr_at(10, cfg, 100) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(55, cfg, 100) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way down
    assert lr_at(100, cfg, 100) == pytest.approx(1e-4)  # ends at lr * min_lr_ratio
    assert lr_at(500, cfg, 100) == pytest.approx(1e-4)  # and stays there
    decay = [lr_at(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, OptimConfig(lr=1e-3, warmup_steps=0), 100) == pytest.approx(1e-3)


def test_one_cycle_and_trapezoid_schedules_and_warmup_as_a_fraction():
    # warmup_fraction 0.1 of 100 steps = 10 warmup steps (the longer of it and warmup_steps).
    one_cycle = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=0, warmup_fraction=0.1, schedule="one_cycle")
    assert lr_at(9, one_cycle, 100) == pytest.approx(1e-3) and lr_at(8, one_cycle, 100) < 1e-3
    assert lr_at(55, one_cycle, 100) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # linear: half way down
    assert lr_at(100, one_cycle, 100) == pytest.approx(1e-4)
    assert lr_at(9, replace(one_cycle, warmup_steps=20), 100) < 1e-3  # warmup_steps longer: it wins
    wsd = replace(one_cycle, schedule="trapezoid", decay_fraction=0.2)
    assert [lr_at(s, wsd, 100) for s in (10, 50, 80)] == pytest.approx([1e-3] * 3)  # stable until 80
    assert lr_at(90, wsd, 100) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # then linear to the end
    assert lr_at(100, wsd, 100) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="schedule must be one of cosine, one_cycle, trapezoid"):
        OptimConfig(schedule="linear")


def test_the_optimiser_takes_its_betas_and_eps_from_the_config():
    model = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(model, OptimConfig(adam_beta1=0.8, adam_beta2=0.98, adam_eps=1e-12), torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.8, 0.98) and optimizer.defaults["eps"] == 1e-12


def test_the_saved_pretrained_config_carries_fine_tuning_dropout(tokenized):
    from components.train.run import set_finetuning_dropout

    tokenizer, _ = tokenized["mlm"]
    spec = OBJECTIVES["mlm"]
    model = spec.build_model(replace(TINY, dropout=0.0), tokenizer)  # pretrain.dropout
    set_finetuning_dropout(model, spec.architecture, replace(TINY, dropout=0.1), tokenizer)
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.1
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # training ran without


def test_resolve_device_dtype_cpu_float32():
    assert resolve_device_dtype("cpu", "float32") == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)


def test_optim_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0"):
        OptimConfig(lr=0)
    with pytest.raises(ValueError, match=r"pretrain\.max_steps must be >= 1"):
        PretrainConfig(max_steps=0)
    with pytest.raises(ValueError, match=r"pretrain\.dtype must be auto, float32 or bfloat16"):
        PretrainConfig(dtype="float16")


@pytest.mark.parametrize("objective", ["clm", "mlm", "mlm_nsp"])
def test_pretrain_lowers_the_loss_and_reports_its_metrics(objective, tokenized):
    tokenizer, data_dir = tokenized[objective]
    model = _model(objective, tokenizer)
    cfg = PretrainConfig(lr=1e-2, warmup_steps=3, max_steps=30, eval_every=15, eval_batches=2, log_every=1,
                         batch_size=16, **CPU)
    logs: list[tuple[int, dict]] = []
    result = pretrain(OBJECTIVES[objective].training(tokenizer, cfg), model, data_dir, cfg, seed=0, on_log=lambda s, m: logs.append((s, m)))

    losses = [m["train_loss"] for _, m in logs if "train_loss" in m]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    evals = [(s, m) for s, m in logs if "val_loss" in m]
    assert [s for s, _ in evals] == [15, 30]
    assert result["val_loss"] == evals[-1][1]["val_loss"]
    assert result["steps"] == 30 and result["tokens"] == 30 * 16 * 32
    assert (result["device"], result["dtype"]) == ("cpu", "float32")
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(len(tokenizer)) + (
        math.log(2) if objective == "mlm_nsp" else 0.0)  # better than uniform guessing
    if objective == "clm":
        assert result["val_perplexity"] == pytest.approx(math.exp(result["val_loss"]))
    else:
        assert 0.0 < result["val_mlm_accuracy"] <= 1.0
    if objective == "mlm_nsp":
        assert 0.0 <= result["val_nsp_accuracy"] <= 1.0
        assert result["val_loss"] > result["val_nsp_loss"] > 0
    else:
        assert "val_nsp_accuracy" not in result


def test_same_seed_gives_the_same_run(tokenized):
    tokenizer, data_dir = tokenized["mlm"]
    cfg = PretrainConfig(lr=1e-2, warmup_steps=2, max_steps=8, eval_every=8, eval_batches=2, log_every=1,
                         batch_size=8, **CPU)

    def run(seed: int):
        logs: list[float] = []
        result = pretrain(OBJECTIVES["mlm"].training(tokenizer, cfg), _model("mlm", tokenizer), data_dir, cfg, seed=seed,
                          on_log=lambda s, m: logs.append(m.get("train_loss")))
        return logs, result["val_loss"]

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first != other


def test_fit_objective_batches_and_early_stop(tokenized):
    """fit() on its own: micro-batches per step, the schedule it sets, and a stop from evaluate."""
    tokenizer, data_dir = tokenized["mlm_nsp"]
    model = _model("mlm_nsp", tokenizer)
    objective = OBJECTIVES["mlm_nsp"].training(tokenizer, PretrainConfig())
    data = PretrainData(data_dir, "train")
    assert {"input_ids", "token_type_ids", "nsp_labels"} <= set(data.arrays)
    calls, evals = [], []

    def next_batch(step, micro):
        calls.append((step, micro))
        idx = np.arange(4 * (2 * step + micro), 4 * (2 * step + micro + 1)) % data.n
        return objective.prepare(data.batch(idx, torch.device("cpu")), torch.Generator().manual_seed(step))

    def evaluate(step):
        evals.append(step)
        return step == 4

    cfg = OptimConfig(lr=1e-3, warmup_steps=2, batch_size=4, grad_accum=2, **CPU)
    timing = fit(model, cfg, 10, next_batch, lambda m, b: objective.forward(m, b)["loss"],
                 evaluate=evaluate, eval_every=2)
    assert timing["steps"] == 4 and evals == [2, 4]
    assert calls == [(s, m) for s in range(4) for m in range(2)]
    assert timing["tokens"] == 4 * 2 * 4 * 32


def test_fit_raises_on_a_nan_loss(tokenized):
    tokenizer, data_dir = tokenized["clm"]
    model = _model("clm", tokenizer)
    objective = OBJECTIVES["clm"].training(tokenizer, PretrainConfig())
    data = PretrainData(data_dir, "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    seen: list[int] = []

    def next_batch(step, micro):
        seen.append(step)
        return objective.prepare(data.batch(np.arange(4), torch.device("cpu")), torch.Generator())

    def loss_fn(m, batch):  # a real loss, poisoned at the third step
        loss = objective.forward(m, batch)["loss"]
        return loss * float("nan") if len(seen) == 3 else loss

    with pytest.raises(FloatingPointError, match="training loss is nan at step 2"):
        fit(model, OptimConfig(lr=1e-3, batch_size=4, **CPU), 10, next_batch, loss_fn)
    assert seen == [0, 1, 2]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # steps 0-1 did train


def test_pretrain_data_requires_tokenized_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the tokenize stage first"):
        PretrainData(tmp_path, "train")


@pytest.mark.parametrize("objective_name", ["mlm", "mlm_nsp"])
def test_mlm_batch_without_masked_tokens_has_zero_not_nan_loss(objective_name, tokenized):
    """A short batch can draw no masked token (0.85**n): that must not read as divergence."""
    tokenizer, data_dir = tokenized[objective_name]
    objective = OBJECTIVES[objective_name].training(tokenizer, PretrainConfig())
    batch = objective.prepare(PretrainData(data_dir, "train").batch(np.arange(2), torch.device("cpu")),
                              torch.Generator().manual_seed(0))
    batch["input_ids"] = torch.where(batch["labels"] == -100, batch["input_ids"], batch["labels"])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    out = objective.forward(_model(objective_name, tokenizer), batch)
    assert out["count"] == 0 and out["mlm_correct"] == 0
    assert out["loss_sum"].item() == 0.0
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("objective", ["clm", "mlm_nsp"])
def test_bf16_training_runs_attention_in_fp32_and_restores_sdpa(objective, tokenized):
    """Under CPU bf16 autocast, fit swaps in fp32 attention (faster backward here) and puts
    SDPA back afterwards; the swapped model computes what SDPA computes, to bf16 precision."""
    from components.train.models import FP32_ATTENTION, fast_cpu_attention

    tokenizer, data_dir = tokenized[objective]
    model = _model(objective, tokenizer).eval()
    objective_ = OBJECTIVES[objective].training(tokenizer, PretrainConfig())
    batch = objective_.prepare(PretrainData(data_dir, "train").batch(np.arange(4), torch.device("cpu")),
                               torch.Generator().manual_seed(0))
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=bf16):
        reference = objective_.forward(model, batch)["loss"].float()
        with fast_cpu_attention(model, cpu, bf16):
            assert model.config._attn_implementation == FP32_ATTENTION
            swapped = objective_.forward(model, batch)["loss"].float()
    assert model.config._attn_implementation == "sdpa"
    assert abs(swapped.item() - reference.item()) < 2e-2 * reference.item()
    with fast_cpu_attention(model, cpu, torch.float32):  # fp32: nothing to gain, nothing changed
        assert model.config._attn_implementation == "sdpa"

    seen = []
    fit(model.train(), OptimConfig(lr=1e-3, warmup_steps=1, batch_size=4, device="cpu", dtype="bfloat16"), 2,
        lambda step, micro: batch,
        lambda m, b: seen.append(m.config._attn_implementation) or objective_.forward(m, b)["loss"])
    assert seen == [FP32_ATTENTION] * 2 and model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("architecture", ["gpt2", "bert"])
def test_fp32_attention_keeps_the_padding_mask(architecture, gpt2_tokenizer, bert_tokenizer):
    """A fine-tuning batch is right-padded: under fit's fp32 attention (CPU bf16) a text's
    states and logits must not depend on the padding beside it. transformers builds no mask
    for an attention name without a mask function, so BERT once attended to [PAD] in bf16
    training and validation only (fp32 and the evaluate stage run plain SDPA, masked)."""
    from components.objectives import BERT, GPT2
    from components.train.finetuning import collate, encode_for_classifier
    from components.train.models import fast_cpu_attention

    arch, tokenizer = (BERT, bert_tokenizer) if architecture == "bert" else (GPT2, gpt2_tokenizer)
    tokenizer = arch.prepare_classifier_tokenizer(copy.deepcopy(tokenizer), TINY.max_positions)
    torch.manual_seed(0)
    model = arch.build_classifier(TINY, tokenizer, ["a", "b", "c"], None).eval()
    short, long = encode_for_classifier(tokenizer, ["a short text", " ".join(["a much longer text"] * 8)],
                                        TINY.max_positions)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    attention = model.get_submodule({"bert": "bert.encoder.layer.0.attention.self", "gpt2": "transformer.h.0.attn"}
                                    [architecture])
    seen = []
    attention.register_forward_hook(lambda module, args, out: seen.append(out[0][0, : len(short)].float()))
    with torch.no_grad(), fast_cpu_attention(model, cpu, bf16), torch.autocast("cpu", dtype=bf16):
        alone = model(**collate([short], tokenizer.pad_token_id, cpu)).logits[0].float()
        padded = model(**collate([short, long], tokenizer.pad_token_id, cpu)).logits[0].float()
    # The first attention's output at the text's tokens (padding attended to moves it by a
    # share of the pads' values), then what the head makes of it.
    torch.testing.assert_close(seen[1], seen[0], atol=1e-3, rtol=2e-2)
    torch.testing.assert_close(padded, alone, atol=1e-3, rtol=2e-2)


def test_fused_head_loss_matches_cross_entropy_and_its_gradients():
    """components/train/losses.py: loss and both gradients equal F.cross_entropy over full logits
    (fp32, ignored rows, ragged last chunk); under bf16 autocast, within bf16 rounding."""
    from components.train.losses import IGNORE_INDEX, linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (300,))
    targets[::5] = IGNORE_INDEX
    reference = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX)
    ref_grads = torch.autograd.grad(reference, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets, chunk=64)
    grads = torch.autograd.grad(3.0 * fused, (hidden, weight))
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, 3.0 * want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation: the loss alone
        assert linear_cross_entropy(hidden, weight, targets).item() == pytest.approx(reference.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = linear_cross_entropy(hidden, weight, targets)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(reference.item(), rel=2e-2)
    everything_ignored = torch.full((300,), IGNORE_INDEX)
    assert linear_cross_entropy(hidden, weight, everything_ignored).item() == 0.0
    # With a bias (BERT's decoder) and a given denominator (DDP's global count per rank).
    bias = torch.randn(50, requires_grad=True)
    denominator = torch.tensor(97.5)
    reference = F.cross_entropy(torch.addmm(bias, hidden, weight.t()), targets, ignore_index=IGNORE_INDEX,
                                reduction="sum") / denominator
    ref_grads = torch.autograd.grad(reference, (hidden, weight, bias))
    fused = linear_cross_entropy(hidden, weight, targets, chunk=64, bias=bias, denominator=denominator)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    for got, want in zip(torch.autograd.grad(fused, (hidden, weight, bias)), ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, targets, bias=bias, denominator=denominator).item() == \
            pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("objective_name", ["mlm", "mlm_nsp"])
def test_mlm_training_loss_is_forwards_loss_with_the_same_gradients(objective_name, tokenized):
    """MaskedLMTraining.loss (the head fused into the loss, what training runs) against forward's
    loss (transformers' head, then cross-entropy; what evaluation runs): the same loss and the
    same gradient for every parameter, in fp32 and with DDP's denominators; close under bf16."""
    tokenizer, data_dir = tokenized[objective_name]
    objective = OBJECTIVES[objective_name].training(tokenizer, PretrainConfig())
    batch = objective.prepare(PretrainData(data_dir, "train").batch(np.arange(4), torch.device("cpu")),
                              torch.Generator().manual_seed(0))
    model = _model(objective_name, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    for case in (batch, {**batch, **objective.loss_denominators(batch, world_size=2)}):
        torch.manual_seed(1)  # the same dropout masks for both
        reference = objective.forward(model, case)["loss"]
        torch.manual_seed(1)
        fused = objective.loss(model, case)
        assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
        for got, want in zip(torch.autograd.grad(fused, params, allow_unused=True),
                             torch.autograd.grad(reference, params, allow_unused=True)):
            assert (got is None) == (want is None)
            if got is not None:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        low = objective.loss(model, batch)
        torch.manual_seed(1)
        reference = objective.forward(model, batch)["loss"]
    assert low.item() == pytest.approx(reference.item(), rel=1e-2)


def test_clm_objective_loss_equals_the_models_own_labels_loss(tokenized):
    tokenizer, data_dir = tokenized["clm"]
    model = _model("clm", tokenizer).eval()
    objective = OBJECTIVES["clm"].training(tokenizer, PretrainConfig())
    batch = objective.prepare(PretrainData(data_dir, "train").batch(np.arange(4), torch.device("cpu")), None)
    with torch.no_grad():
        ours = objective.forward(model, batch)["loss"]
        theirs = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["within", "cross"])
def test_clm_document_attention_within_ignores_the_previous_document(gpt2_tokenizer, mode):
    """Within: the next document's predictions do not depend on the document before it in the
    block; cross (GPT-2's packing) they do."""
    training = OBJECTIVES["clm"].training(gpt2_tokenizer, PretrainConfig(clm_document_attention=mode))
    model = _model("clm", gpt2_tokenizer).eval()
    eos = gpt2_tokenizer.eos_token_id
    first, second = list(range(10, 20)), list(range(30, 45))
    ids = torch.tensor([first + [eos] + second, list(range(50, 60)) + [eos] + second])
    with torch.no_grad():
        logits = model.lm_head(model.transformer(input_ids=ids, attention_mask=training.attention_mask(ids))[0])
    nxt = slice(len(first) + 1, None)
    same = torch.allclose(logits[0, nxt], logits[1, nxt], atol=1e-5)
    assert same == (mode == "within")
    # The first document itself is causal either way: its last token's logits see all of it.
    assert not torch.allclose(logits[0, len(first) - 1], logits[1, len(first) - 1])


def test_clm_document_attention_is_checked():
    with pytest.raises(ValueError, match="pretrain.clm_document_attention must be cross or within"):
        PretrainConfig(clm_document_attention="document")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top1_is_argmax_ties_included(dtype):
    """losses.top1 (max's indices, faster on the CPU) picks what argmax picks: the first of
    tied maxima, which small integer logits make common."""
    from components.train.losses import top1

    torch.manual_seed(0)
    for logits in (torch.randn(64, 500), torch.randint(0, 4, (64, 500)).float(), torch.zeros(3, 7)):
        logits = logits.to(dtype)
        assert torch.equal(top1(logits), logits.argmax(-1))
