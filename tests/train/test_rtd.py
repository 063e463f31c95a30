"""Replaced-token detection (ELECTRA): the generator shares the discriminator's embeddings, masks
and samples as the paper does, the loss and metrics count what they say, the FLOPs include the
generator, and the saved discriminator is a standard BERT that loads through Auto classes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from components.config import ModelConfig, PretrainConfig, TokenizeConfig
from components.objectives import OBJECTIVES
from components.tokens.tokenization import tokenize_corpus
from components.train.collators import IGNORE_INDEX
from components.train.flops import flops_per_token
from components.train.pretraining import PretrainData, TokenBaseline, evaluate_pretraining, pretrain
from components.train.rtd import REPLACED, generator_shape, sample_tokens
from conftest import _prose

TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32, dropout=0.0)
DEMO = ModelConfig()
RTD = OBJECTIVES["rtd"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rtd_data(tmp_path_factory, bert_tokenizer):
    root = tmp_path_factory.mktemp("rtd")
    docs = _prose()
    tokenize_corpus(RTD, bert_tokenizer, {"train": docs, "validation": docs[:6]}, TokenizeConfig(block_size=32), 0,
                    root)
    return bert_tokenizer, root


def test_the_generator_is_a_quarter_wide_and_shares_the_discriminators_embeddings(bert_tokenizer):
    model = RTD.build_model(DEMO, bert_tokenizer)
    disc, gen = model.discriminator, model.generator
    assert type(disc).__name__ == "BertForTokenClassification" and disc.config.num_labels == 2
    assert disc.config.id2label == {0: "original", 1: "replaced"}
    assert gen.config.hidden_size == DEMO.d_model // 4 and gen.config.num_hidden_layers == DEMO.n_layers
    assert gen.config.intermediate_size == DEMO.d_ff // 4 and gen.config.embedding_size == DEMO.d_model
    shared = disc.bert.embeddings
    assert gen.electra.embeddings is shared
    assert gen.generator_lm_head.weight is shared.word_embeddings.weight  # output layer tied to them
    # Each shared tensor once in the optimiser's parameter list.
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))
    assert RTD.saved_model(model) is disc


def test_generator_shape_keeps_the_head_size():
    assert generator_shape(256, 4, 1024, 0.25) == {"hidden_size": 64, "num_attention_heads": 1,
                                                    "intermediate_size": 256}
    assert generator_shape(768, 12, 3072, 1 / 3) == {"hidden_size": 256, "num_attention_heads": 4,
                                                      "intermediate_size": 1024}
    assert generator_shape(32, 2, 64, 0.25)["hidden_size"] == 16  # never narrower than one head


def test_masking_uses_only_mask_tokens_and_never_specials(rtd_data):
    tokenizer, root = rtd_data
    training = RTD.training(tokenizer, PretrainConfig(rtd_mask_probability=0.15))
    raw = PretrainData(root, "train").batch(np.arange(16), torch.device("cpu"))
    batch = training.prepare(raw, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != IGNORE_INDEX
    assert torch.all(batch["input_ids"][chosen] == tokenizer.mask_token_id)  # no 10/10 random/kept
    assert torch.equal(batch["input_ids"][~chosen], raw["input_ids"][~chosen])
    assert not torch.isin(raw["input_ids"][chosen], torch.tensor(tokenizer.all_special_ids)).any()
    share = chosen.sum() / (~torch.isin(raw["input_ids"], torch.tensor(tokenizer.all_special_ids))).sum()
    assert 0.10 < float(share) < 0.20


def test_sampling_inverts_the_cdf_exactly():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).repeat(4, 1)
    u = torch.tensor([0.05, 0.15, 0.31, 0.999999])
    assert sample_tokens(logits, u).tolist() == [0, 1, 2, 2]
    draws = sample_tokens(logits.repeat(5000, 1), torch.rand(20000, generator=torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(np.bincount(draws.numpy(), minlength=3) / 20000, [0.1, 0.2, 0.7], atol=0.015)


def test_loss_labels_and_gradients(rtd_data):
    tokenizer, root = rtd_data
    cfg = PretrainConfig(rtd_mask_probability=0.3)
    training = RTD.training(tokenizer, cfg)
    torch.manual_seed(0)
    model = RTD.build_model(TINY, tokenizer, cfg)
    raw = PretrainData(root, "train").batch(np.arange(8), torch.device("cpu"))
    batch = training.prepare(raw, torch.Generator().manual_seed(3))
    out = training.forward(model, batch)
    assert torch.isfinite(out["loss"])
    real = int(batch["attention_mask"].sum())
    assert out["rtd_count"] == real and out["count"] == int((batch["labels"] != IGNORE_INDEX).sum())
    # A replaced token is one the generator's sample changed: never more than were masked.
    assert 0 < int(out["rtd_replaced"]) <= out["count"]
    expected = out["loss_sum"] / out["count"] + 50.0 * out["rtd_loss_sum"] / out["rtd_count"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    out["loss"].backward()
    for name in ("discriminator.classifier.weight", "generator.generator_lm_head.bias",
                 "generator.electra.encoder.layer.0.attention.self.query.weight",
                 "discriminator.bert.embeddings.word_embeddings.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_sample_equal_to_the_original_counts_as_original(rtd_data):
    """A generator certain of the right token replaces nothing: the trivial baseline is then 1
    (ELECTRA's generator samples only: no uniform replacements)."""
    tokenizer, root = rtd_data
    training = RTD.training(tokenizer, PretrainConfig(rtd_uniform_start=0.0, rtd_uniform_end=0.0))
    model = RTD.build_model(TINY, tokenizer)
    raw = PretrainData(root, "train").batch(np.arange(4), torch.device("cpu"))
    batch = training.prepare(raw, torch.Generator().manual_seed(0))
    head = model.generator.generator_lm_head
    original = head.forward

    def certain(hidden):  # the right token at every masked position, by a wide margin
        logits = torch.full((*hidden.shape[:-1], head.out_features), -1e4)
        logits[torch.arange(len(logits)), batch["labels"][batch["labels"] != IGNORE_INDEX]] = 1e4
        return logits

    head.forward = certain
    try:
        out = training.forward(model, batch)
    finally:
        head.forward = original
    assert int(out["rtd_replaced"]) == 0
    assert training.metrics({k: float(v) for k, v in out.items() if k != "loss"})["val_rtd_baseline_accuracy"] == 1.0


def test_validation_metrics_sit_beside_their_baselines(rtd_data):
    tokenizer, root = rtd_data
    model = RTD.build_model(TINY, tokenizer).eval()
    training = RTD.training(tokenizer, PretrainConfig())
    val = PretrainData(root, "validation")
    m = evaluate_pretraining(model, training, val, 4, 2, 0, torch.device("cpu"), torch.float32,
                             TokenBaseline.of(PretrainData(root, "train"), training.baseline_excluded))
    for metric, baseline in RTD.baselines.items():
        assert metric in m and baseline in m, (metric, baseline)
    assert 0.5 < m["val_rtd_baseline_accuracy"] < 1.0
    assert 0.0 <= m["val_rtd_replaced_recall"] <= 1.0
    assert set(RTD.report_metrics) <= set(m)
    assert "RTD acc" in RTD.summary_line(m) and "unreplaced share" in RTD.summary_line(m)


def test_pretraining_lowers_the_loss_and_the_saved_discriminator_loads_with_auto_classes(rtd_data, tmp_path):
    from transformers import AutoModelForTokenClassification

    tokenizer, root = rtd_data
    cfg = PretrainConfig(max_steps=30, batch_size=8, eval_every=30, eval_batches=2, log_every=5, lr=3e-3,
                         device="cpu", dtype="float32")
    torch.manual_seed(0)
    model = RTD.build_model(TINY, tokenizer, cfg)
    result = pretrain(RTD.training(tokenizer, cfg), model, root, cfg, seed=0)
    losses = [loss for _, loss in result["curve"]]
    assert losses[-1] < losses[0]
    saved = RTD.saved_model(model)
    saved.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "BertForTokenClassification"
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    # The pipeline's classifier takes the encoder, never the token head, whatever the label count.
    from components.train.models import build_classifier

    for labels in (["a", "b"], ["a", "b", "c"]):
        torch.manual_seed(5)
        classifier = build_classifier("BertForSequenceClassification", None, labels, tmp_path)
        torch.testing.assert_close(classifier.bert.encoder.layer[0].output.dense.weight,
                                   saved.bert.encoder.layer[0].output.dense.weight)
        assert not torch.allclose(classifier.classifier.weight[:2], saved.classifier.weight)
        assert classifier.classifier.weight.abs().max() < 0.2  # the init's N(0, 0.02), not a trained head


def test_flops_count_the_generator_and_equal_flops_cut_the_steps(bert_tokenizer):
    cfg = PretrainConfig(max_steps=450)
    rtd = RTD.build_model(DEMO, bert_tokenizer, cfg)
    alone = flops_per_token(rtd.discriminator, 128, 1.0, 0.9)
    both = flops_per_token(rtd, 128, cfg.rtd_mask_probability, 0.9)
    generator = flops_per_token(rtd.generator, 128, cfg.rtd_mask_probability, 0.9)
    assert both == pytest.approx(alone + generator, rel=1e-9)
    mlm = flops_per_token(OBJECTIVES["mlm"].build_model(DEMO, bert_tokenizer), 128, cfg.mlm_probability, 0.9)
    steps = RTD.max_steps(DEMO, bert_tokenizer, cfg, 128, 0.9)
    assert steps < 450 and steps * both <= 450 * mlm < (steps + 1) * both
    assert RTD.max_steps(DEMO, bert_tokenizer, replace(cfg, rtd_equal_flops=False), 128, 0.9) == 450


def test_rtd_params_are_checked():
    with pytest.raises(ValueError, match="pretrain.rtd_mask_probability"):
        PretrainConfig(rtd_mask_probability=0.0)
    with pytest.raises(ValueError, match="pretrain.rtd_generator_width"):
        PretrainConfig(rtd_generator_width=1.5)
    with pytest.raises(ValueError, match="pretrain.rtd_discriminator_weight"):
        PretrainConfig(rtd_discriminator_weight=0)
    assert REPLACED == 1


def test_disentangled_embeddings_keep_the_discriminators_gradient_off_the_shared_table(rtd_data, tmp_path):
    """DeBERTaV3's GDES: the generator owns the token table; the discriminator reads it outside
    its gradient plus a delta (zero at the start) that only it moves; saved, the sum is a plain
    embedding layer of a standard BertForTokenClassification."""
    from transformers import AutoModelForTokenClassification

    from components.train.rtd import DisentangledEmbedding

    tokenizer, root = rtd_data
    cfg = PretrainConfig(rtd_disentangled_embeddings=True)
    torch.manual_seed(0)
    model = RTD.build_model(TINY, tokenizer, cfg)
    disc, gen = model.discriminator, model.generator
    words = disc.bert.embeddings.word_embeddings
    assert isinstance(words, DisentangledEmbedding) and words.shared is gen.electra.embeddings.word_embeddings
    assert gen.generator_lm_head.weight is gen.electra.embeddings.word_embeddings.weight
    assert gen.electra.embeddings.position_embeddings is disc.bert.embeddings.position_embeddings  # still one
    torch.testing.assert_close(words.weight, words.shared.weight)  # the delta starts at zero
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))

    training = RTD.training(tokenizer, cfg)
    batch = training.prepare(PretrainData(root, "train").batch(np.arange(8), torch.device("cpu")),
                             torch.Generator().manual_seed(3))
    table = gen.electra.embeddings.word_embeddings.weight
    disc(input_ids=batch["original_ids"]).logits.square().sum().backward()  # a discriminator loss alone
    assert table.grad is None or not table.grad.any()
    assert words.delta.grad is not None and words.delta.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    training.forward(model, batch)["loss"].backward()  # the generator's MLM loss moves the table
    assert table.grad.abs().sum() > 0

    with torch.no_grad():
        words.delta.normal_()
    saved = RTD.saved_model(model)
    assert saved is not disc and type(saved.bert.embeddings.word_embeddings) is torch.nn.Embedding
    torch.testing.assert_close(saved.bert.embeddings.word_embeddings.weight, words.shared.weight + words.delta)
    saved.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    x = batch["original_ids"][:2]
    torch.testing.assert_close(loaded(input_ids=x).logits, disc.eval()(input_ids=x).logits)
    assert isinstance(disc.bert.embeddings.word_embeddings, DisentangledEmbedding)  # training's model untouched


def test_the_replacement_curriculum_anneals_uniform_replacements(rtd_data):
    tokenizer, root = rtd_data
    raw = PretrainData(root, "train").batch(np.arange(16), torch.device("cpu"))
    electra = PretrainConfig(rtd_uniform_start=0.0, rtd_uniform_end=0.0)
    plain = RTD.training(tokenizer, electra).prepare(raw, torch.Generator().manual_seed(0))
    assert "uniform_ids" not in plain  # off: ELECTRA's batches, the same random draws as before

    training = RTD.training(tokenizer, PretrainConfig(rtd_uniform_start=1.0, rtd_uniform_end=0.0))
    assert training.uniform_share(0.0) == 1.0 and training.uniform_share(0.5) == 0.5 and training.uniform_share(1.0) == 0.0
    first = training.prepare(raw, torch.Generator().manual_seed(0), progress=0.0)
    chosen = first["labels"] != IGNORE_INDEX
    for key in plain:  # the curriculum draws after ELECTRA's: masks and samples unchanged
        assert torch.equal(first[key], plain[key]), key
    assert torch.all(first["uniform_ids"][chosen] >= 0) and torch.all(first["uniform_ids"][~chosen] == -1)
    assert not torch.isin(first["uniform_ids"][chosen], torch.tensor(tokenizer.all_special_ids)).any()
    assert len(set(first["uniform_ids"][chosen].tolist())) > chosen.sum() // 2  # spread over the vocabulary
    last = training.prepare(raw, torch.Generator().manual_seed(0), progress=1.0)
    assert torch.all(last["uniform_ids"] == -1)

    model = RTD.build_model(TINY, tokenizer)
    out = training.forward(model, first)
    corrupted_share = out["rtd_uniform_replaced"] / out["rtd_replaced"]
    assert out["rtd_uniform_replaced"] > 0 and float(corrupted_share) == 1.0  # every replacement uniform at step 0
    m = training.metrics({k: float(v) for k, v in out.items() if k != "loss"})
    assert {"val_rtd_uniform_recall", "val_rtd_generator_recall", "val_rtd_uniform_share"} <= set(m)
    assert "of uniform" in RTD.summary_line(m)


def test_pretraining_passes_its_progress_to_the_curriculum(rtd_data):
    from components.train.pretraining import _batches

    tokenizer, root = rtd_data
    cfg = PretrainConfig(max_steps=11, batch_size=8, rtd_uniform_start=1.0, rtd_uniform_end=0.0)
    training = RTD.training(tokenizer, cfg)
    next_batch = _batches(training, PretrainData(root, "train"), cfg, 0, torch.device("cpu"), 0, 1)
    first, middle, last = next_batch(0, 0), next_batch(5, 0), next_batch(10, 0)
    share = lambda b: float((b["uniform_ids"] >= 0).sum() / (b["labels"] != IGNORE_INDEX).sum())
    assert share(first) == 1.0 and share(last) == 0.0 and 0.2 < share(middle) < 0.8


def test_rtd_curriculum_params_are_checked():
    for name in ("rtd_uniform_start", "rtd_uniform_end"):
        with pytest.raises(ValueError, match=rf"pretrain.{name} must be in \[0, 1\]"):
            PretrainConfig(**{name: 1.5})
