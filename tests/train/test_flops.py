"""FLOPs per token against hand counts for GPT-2 124M and BERT-base (PaLM appendix B
accounting: 6 FLOPs per matmul weight per token for forward + backward, plus 12 * L * d * T
for attention's score and value matmuls; embedding lookups are not matmuls)."""
from __future__ import annotations

import pytest
import torch

from components.train.flops import device_peak_flops, flops_per_token, mfu


def _on_meta(build):
    """Full-size models on the meta device: shapes without a byte of weights."""
    with torch.device("meta"):
        return build()


@pytest.fixture(scope="module")
def gpt2_124m():
    from transformers import GPT2Config, GPT2LMHeadModel

    return _on_meta(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768,
                                                       n_layer=12, n_head=12)))


@pytest.fixture(scope="module")
def bert_base():
    from transformers import BertConfig, BertForPreTraining

    return _on_meta(lambda: BertForPreTraining(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                                          num_attention_heads=12, intermediate_size=3072,
                                                          max_position_embeddings=512, type_vocab_size=2)))


def test_gpt2_124m_matches_the_hand_count(gpt2_124m):
    # One block's matmul weights (d = 768):
    #   c_attn  768 x 2304 (Q, K, V) = 1,769,472
    #   c_proj  768 x  768           =   589,824
    #   c_fc    768 x 3072           = 2,359,296
    #   c_proj 3072 x  768           = 2,359,296
    #                                  ---------
    #                                  7,077,888  x 12 blocks = 84,934,656
    # lm_head (tied to wte, but a matmul where it runs) 768 x 50,257 = 38,597,376
    # N = 84,934,656 + 38,597,376 = 123,532,032 (wte/wpe lookups, biases, LayerNorms left out)
    # 6N = 741,192,192
    # attention: 12 * L * d * T = 12 * 12 * 768 * 1024 = 113,246,208
    hand = 741_192_192 + 113_246_208  # = 854,438,400
    assert flops_per_token(gpt2_124m, 1024) == hand
    # The old count, 6 * all 124,439,808 parameters + attention = 859,885,056, was 1.0064x this.


def test_bert_base_matches_the_hand_count(bert_base):
    # Encoder, every token; one layer: Q, K, V, O 4 x 768 x 768 = 2,359,296
    #                                  FFN      2 x 768 x 3072 = 4,718,592
    #                                                            7,077,888 x 12 = 84,934,656
    # MLM head, only at the 15% masked positions:
    #   transform 768 x 768 = 589,824, decoder (tied) 768 x 30,522 = 23,440,896
    #   (589,824 + 23,440,896) * 0.15 = 24,030,720 * 0.15 = 3,604,608
    # Pooler + NSP classifier, once per 512-token sequence:
    #   (768 x 768 + 768 x 2) / 512 = 591,360 / 512 = 1,155
    # N = 84,934,656 + 3,604,608 + 1,155 = 88,540,419;  6N = 531,242,514
    # attention: 12 * 12 * 768 * 512 = 56,623,104
    hand = 531_242_514 + 56_623_104  # = 587,865,618
    assert flops_per_token(bert_base, 512, masked_fraction=0.15) == pytest.approx(hand, rel=1e-12)
    # The old count, 6 * all 110,106,428 parameters + attention = 717,261,672, was 1.2201x this.


def test_padding_earns_no_flops(bert_base):
    # A quarter of the positions are padding: the per-token work of the encoder, the MLM head
    # and attention is credited on the real three quarters only; the pooler and NSP classifier
    # still run once per row: 0.75 * (6 * (84,934,656 + 3,604,608) + 56,623,104) + 6 * 1,155
    hand = 0.75 * (6 * 88_539_264 + 56_623_104) + 6 * 1_155  # = 440,900,946
    got = flops_per_token(bert_base, 512, masked_fraction=0.15, real_fraction=0.75)
    assert got == pytest.approx(hand, rel=1e-12) and hand == 440_900_946


def test_bad_fractions_are_refused(bert_base):
    with pytest.raises(ValueError, match="masked_fraction"):
        flops_per_token(bert_base, 512, masked_fraction=1.5)
    with pytest.raises(ValueError, match="real_fraction"):
        flops_per_token(bert_base, 512, real_fraction=0.0)


def test_mfu_only_for_known_devices():
    assert device_peak_flops("NVIDIA H200") == 989.4e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak_flops("cpu") is None and mfu(1e5, 1e9, None) is None
    assert mfu(100_000, 989e7, 989e12) == 1.0


def test_benchmark_replays_each_matmul_of_a_step_once():
    """benchmarks/train.py's matmuls-alone bound: one training step's matmuls, each once, in the
    dtype it ran in. Under bf16 autocast a direct torch.addmm (as GPT-2's Conv1D calls it) shows
    in the profile twice (autocast's fp32 call around the bf16 kernel): counted once, in bf16."""
    import contextlib

    from benchmarks.train import matmul_flops, step_matmuls
    from components.config import PretrainConfig

    class DirectAddmm(torch.nn.Module):  # Conv1D's pattern: x @ W + b through torch.addmm
        def __init__(self):
            super().__init__()
            self.weight, self.bias = torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.zeros(8))

        def forward(self, x):
            return torch.addmm(self.bias, x, self.weight)

    torch.manual_seed(0)
    model = torch.nn.Sequential(DirectAddmm(), torch.nn.Linear(8, 4))
    x = torch.randn(32, 16)
    calls = step_matmuls(model, lambda step, micro: {"input_ids": x},
                         lambda m, b: m(b["input_ids"]).float().pow(2).mean(),
                         PretrainConfig(device="cpu", dtype="bfloat16"), contextlib.nullcontext)
    # Forward: x @ W1, h @ W2; backward: W2's and h's gradients, W1's (x needs none).
    assert sorted(shapes for _, shapes, _ in calls) == sorted([
        [(8,), (32, 16), (16, 8)], [(4,), (32, 8), (8, 4)],
        [(4, 32), (32, 8)], [(32, 4), (4, 8)], [(16, 32), (32, 8)]])
    assert {dtype for *_, dtype in calls} == {torch.bfloat16}
    assert sum(matmul_flops(shapes) for _, shapes, _ in calls) == 2 * (2 * 32 * 16 * 8 + 3 * 32 * 8 * 4)
