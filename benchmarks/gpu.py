"""GPU check: GPT-2 124M at 1024 tokens and BERT-base at 512 in bf16 through lmforge's loop:
tokens/s, MFU and peak memory. Skips cleanly (exit 0, a JSON line saying why) without CUDA.

    python -m benchmarks.gpu [--steps 30] [--batch 16] [--compile]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from components.train.flops import device_peak_flops, flops_per_token, mfu
from components.train.loop import OptimConfig, fit


def measure(model: torch.nn.Module, seq: int, batch: int, steps: int, vocab: int, compile_model: bool) -> dict:
    device = torch.device("cuda")
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = torch.compile(model) if compile_model else model
    cfg = OptimConfig(lr=3e-4, warmup_steps=2, batch_size=batch, device="cuda", dtype="bfloat16")
    g = torch.Generator(device=device).manual_seed(0)

    def next_batch(step, micro):
        ids = torch.randint(0, vocab, (batch, seq), device=device, generator=g)
        return {"input_ids": ids}

    def loss_fn(m, b):
        return m(input_ids=b["input_ids"], labels=b["input_ids"]).loss

    fit(trainable, cfg, 3, next_batch, loss_fn)  # warm-up (and compilation)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit(trainable, cfg, steps, next_batch, loss_fn)
    torch.cuda.synchronize()
    tps = steps * batch * seq / (time.perf_counter() - start)
    # transformers' labels= path runs the vocabulary head on every token, and random ids have no padding.
    per_token = flops_per_token(model, seq)
    return {"tokens_per_s": tps, "mfu": mfu(tps, per_token, device_peak_flops(torch.cuda.get_device_name())),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30, "parameters": n_params}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device on this machine"}))
        return
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                      attn_implementation="sdpa"))
    bert = BertForMaskedLM(BertConfig(vocab_size=30528, attn_implementation="sdpa"))
    result = {
        "device": torch.cuda.get_device_name(),
        "gpt2_124m_seq1024": measure(gpt2, 1024, args.batch, args.steps, 50304, args.compile),
        "bert_base_seq512": measure(bert, 512, args.batch * 2, args.steps, 30528, args.compile),
        "compile": args.compile,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
