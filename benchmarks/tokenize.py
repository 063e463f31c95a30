"""Tokenization benchmark: the standard Hugging Face recipe vs lmforge's tokenize stage.

Same corpus (the built-in one, repeated to at least `--mb` MB of UTF-8 as one parquet
file, like ingest writes), same trained tokenizer (8k byte-level BPE), same block size,
same number of processes N (each run pinned to N cores):

- hf_recipe: `Dataset.from_parquet`, `map(tokenize, batched=True, num_proc=N)`, then
  `map(group_texts, batched=True, num_proc=N)`: transformers' run_clm.py data path.
- ours: `tokenize_corpus(OBJECTIVES["clm"], ...)` from the parquet file to packed `.npy` blocks.
- encode_only: the same tokenizer's `encode_batch_fast` over the same texts, already in
  memory, results discarded: the most any pipeline on this tokenizer can reach. Measured
  in batches of our batch size and in one call; the faster one counts.

Each measurement runs in a fresh process (rayon's thread pool and the fork in `map(num_proc)`
cannot leak between methods; peak RSS is per method), three repetitions interleaved, medians
reported. Tokens/s for every method = the corpus's token count / that method's seconds.
Prints a table, then one JSON line. `--memory` instead tokenizes 20 MB and 200 MB corpora
(clm, mlm, mlm_nsp) and reports each run's peak RSS.

    python -m benchmarks.tokenize [--mb 20] [--repeats 3] [--procs N] [--block-size 512]
    python -m benchmarks.tokenize --memory
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("encode_only", "hf_recipe", "ours")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (map(num_proc) workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """Peak RSS of this process plus its largest child's (map(num_proc) workers), in MiB.

    On Linux from VmHWM: `ru_maxrss` survives exec, so a child started by a parent holding
    a 200 MB corpus would report the parent's size at fork as its own peak.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        status = Path("/proc/self/status").read_text()
        own = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        if sys.platform == "darwin":
            own //= 1024  # bytes there, not KiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return (own + children) / 2**20


def prepare(work: Path, vocab_size: int) -> list[str]:
    """The built-in corpus (train split) and 8k byte-level BPE / WordPiece tokenizers trained on it."""
    from components.config import DataConfig, DownstreamConfig
    from components.data.corpus import build_corpus
    from components.objectives import ARCHITECTURES
    from components.config import TokenizerConfig
    from components.tokens.tokenization import iter_texts

    build_corpus(DataConfig(), DownstreamConfig(), 1337, work / "corpus", work / "downstream")
    texts = list(iter_texts(work / "corpus" / "train.parquet"))
    for arch in ARCHITECTURES:
        ARCHITECTURES[arch].train_tokenizer(iter(texts), TokenizerConfig(vocab_size=vocab_size), work / arch)
    return texts


def write_repeated(work: Path, texts: list[str], mb: int) -> tuple[Path, dict]:
    """`texts` repeated to >= `mb` MB of UTF-8, as one parquet row group like ingest writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = sum(len(t.encode("utf-8")) for t in texts)
    copies = -(-mb * 10**6 // size)
    path = work / f"corpus{mb}.parquet"
    pq.write_table(pa.table({"text": texts * copies}), path)
    return path, {"copies": copies, "mb": round(size * copies / 10**6, 1), "documents": len(texts) * copies}


# -- one measurement, in its own process ----------------------------------------------

def child_encode_only(work: Path, corpus: Path, procs: int, block_size: int) -> dict:
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from components.tokens.packing import batched
    from components.config import TokenizeConfig

    texts = pq.read_table(corpus, columns=["text"]).column(0).to_pylist()
    tok = Tokenizer.from_file(str(work / "gpt2" / "tokenizer.json"))
    batches = list(batched(texts, TokenizeConfig().batch_size))
    best: dict = {"seconds": float("inf")}
    for how in ("batches", "one_call"):
        start, cpu = time.perf_counter(), cpu_seconds()
        if how == "batches":
            counts = [sum(len(e) for e in tok.encode_batch_fast(b, add_special_tokens=False)) for b in batches]
        else:
            counts = [sum(len(e) for e in tok.encode_batch_fast(texts, add_special_tokens=False))]
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        if seconds < best["seconds"]:
            best = {"seconds": seconds, "cpu_s": cpu, "tokens": sum(counts), "how": how}
    return best


def child_hf_recipe(work: Path, corpus: Path, procs: int, block_size: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(work / "gpt2"))
    cache = Path(tempfile.mkdtemp(dir=work, prefix="hf-cache-"))

    def tokenize(batch):
        return tokenizer(batch["text"])

    def group_texts(batch):
        # Concatenate every column, cut into full blocks, drop the remainder; labels = inputs.
        joined = {k: [t for seq in batch[k] for t in seq] for k in batch}
        usable = len(joined["input_ids"]) // block_size * block_size
        out = {k: [v[i : i + block_size] for i in range(0, usable, block_size)] for k, v in joined.items()}
        out["labels"] = list(out["input_ids"])
        return out

    start, cpu = time.perf_counter(), cpu_seconds()
    raw = datasets.Dataset.from_parquet(str(corpus), cache_dir=str(cache))
    tokenized = raw.map(tokenize, batched=True, num_proc=procs, remove_columns=raw.column_names)
    blocks = tokenized.map(group_texts, batched=True, num_proc=procs)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "blocks": len(blocks)}


def child_ours(work: Path, corpus: Path, procs: int, block_size: int, objective: str = "clm") -> dict:
    from components.objectives import OBJECTIVES
    from components.config import TokenizeConfig
    from components.tokens.tokenization import iter_texts, load_tokenizer, tokenize_corpus

    tokenizer = load_tokenizer(work / OBJECTIVES[objective].architecture.name)
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"ours-{objective}-"))
    start, cpu = time.perf_counter(), cpu_seconds()
    meta = tokenize_corpus(OBJECTIVES[objective], tokenizer, {"train": iter_texts(corpus)},
                           TokenizeConfig(block_size=block_size), 0, out / "data")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_s": cpu, **meta["splits"]["train"]}


def run_child(method: str, work: Path, corpus: Path, procs: int, block_size: int, objective: str = "clm") -> dict:
    cmd = [sys.executable, "-m", "benchmarks.tokenize", "--child", method, "--work", str(work), "--corpus", str(corpus),
           "--procs", str(procs), "--block-size", str(block_size), "--objective", objective]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(args) -> None:
    if hasattr(os, "sched_setaffinity") and args.procs < available_cores():
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.procs])
    work, corpus = Path(args.work), Path(args.corpus)
    if args.child == "encode_only":
        result = child_encode_only(work, corpus, args.procs, args.block_size)
    elif args.child == "hf_recipe":
        result = child_hf_recipe(work, corpus, args.procs, args.block_size)
    else:
        result = child_ours(work, corpus, args.procs, args.block_size, args.objective)
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))


# -- the comparison --------------------------------------------------------------------

def speed(args, work: Path) -> None:
    corpus, info = write_repeated(work, prepare(work, args.vocab_size), args.mb)
    print(f"corpus: built-in x{info['copies']} = {info['mb']} MB, {info['documents']:,} documents; "
          f"{args.vocab_size} byte-level BPE; block {args.block_size}; N = {args.procs} on "
          f"{available_cores()} cores", file=sys.stderr)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for rep in range(args.repeats):
        order = METHODS[rep % 3 :] + METHODS[: rep % 3]  # rotate, so no method always runs first
        for method in order:
            runs[method].append(run_child(method, work, corpus, args.procs, args.block_size))
            r = runs[method][-1]
            print(f"  rep {rep + 1} {method:12s} {r['seconds']:6.2f}s wall {r['cpu_s']:6.2f}s cpu  "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    mlm = run_child("ours", work, corpus, args.procs, args.block_size, objective="mlm")
    tokens = runs["encode_only"][0]["tokens"]
    rate = {m: [tokens / r["seconds"] for r in runs[m]] for m in METHODS}
    med = {m: statistics.median(v) for m, v in rate.items()}
    ratios = {"speedup": statistics.median(o / h for o, h in zip(rate["ours"], rate["hf_recipe"])),
              "limit_ratio": statistics.median(o / e for o, e in zip(rate["ours"], rate["encode_only"]))}
    # Tokens per CPU-second: what the wall-clock numbers converge to when others share the cores.
    per_cpu = {m: statistics.median(tokens / r["cpu_s"] for r in runs[m]) for m in METHODS}
    print(f"\n{'method':14s}{'median tok/s':>14s}{'runs (M tok/s)':>22s}{'tok/cpu-s':>12s}{'peak RSS MB':>13s}")
    for m in METHODS:
        runs_txt = " ".join(f"{r / 1e6:.2f}" for r in rate[m])
        print(f"{m:14s}{med[m]:>14,.0f}{runs_txt:>22s}{per_cpu[m]:>12,.0f}"
              f"{max(r['peak_rss_mb'] for r in runs[m]):>13.0f}")
    clm = runs["ours"][-1]
    print(f"\ntokens {tokens:,}; ours/recipe {ratios['speedup']:.2f}x; ours/encode-only {ratios['limit_ratio']:.3f}")
    print(f"packing efficiency: clm {clm['packing_efficiency']:.4f} (dropped {clm['tokens_dropped']}), "
          f"mlm {mlm['packing_efficiency']:.4f} (dropped {mlm['tokens_dropped']}, {mlm['seconds']:.2f}s)")
    print(json.dumps({
        "benchmark": "tokenize", "corpus_mb": info["mb"], "tokens": tokens, "procs": args.procs,
        "ours_tokens_per_s": round(med["ours"]), "hf_recipe_tokens_per_s": round(med["hf_recipe"]),
        "encode_only_tokens_per_s": round(med["encode_only"]),
        "speedup": round(ratios["speedup"], 3), "limit_ratio": round(ratios["limit_ratio"], 3),
        "packing_efficiency": round(min(clm["packing_efficiency"], mlm["packing_efficiency"]), 5),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["ours"]), 1),
    }))


def memory(args, work: Path) -> None:
    from components.objectives import OBJECTIVE_NAMES

    texts = prepare(work, args.vocab_size)
    result = {"benchmark": "tokenize_memory"}
    corpora = {mb: write_repeated(work, texts, mb)[0] for mb in (20, 200)}
    for objective in OBJECTIVE_NAMES:
        for mb, path in corpora.items():
            r = run_child("ours", work, path, args.procs, 128, objective=objective)
            result[f"{objective}_{mb}mb_peak_rss_mb"] = round(r["peak_rss_mb"], 1)
            print(f"{objective:8s} {mb:4d} MB: {r['corpus_tokens']:>12,} tokens {r['seconds']:7.1f}s "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
        ratio = result[f"{objective}_200mb_peak_rss_mb"] / result[f"{objective}_20mb_peak_rss_mb"]
        result[f"{objective}_ratio"] = round(ratio, 3)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--procs", type=int, default=available_cores())
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--memory", action="store_true", help="peak RSS at 20 MB vs 200 MB instead of speed")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--objective", default="clm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    import shutil

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-tokenize-"))
    try:
        (memory if args.memory else speed)(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
