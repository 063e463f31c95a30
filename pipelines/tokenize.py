"""Stage tokenize: documents -> packed blocks (clm, mlm) or NSP pairs (mlm_nsp), memory-mappable.

The corpus is streamed by parquet record batches, so memory does not grow with its size.
Stats go to reports/tokenize/<objective>.json (DVC metrics) and to MLflow.
"""
from __future__ import annotations

import time
from pathlib import Path

from components import paths
from components.registry import tracking
from components.io import write_json_atomic
from components.tokens.tokenization import load_tokenizer, tokenize_corpus
from pipelines._stage import run_stage
from pipelines.train_tokenizer import iter_texts

SPLITS = ("train", "validation")


def main(argv=None) -> None:
    def body(cfg: dict, objective: str) -> None:
        tokenizer = load_tokenizer(paths.tokenizer_dir(paths.ARCHITECTURE[objective]))
        splits = {s: iter_texts(Path(paths.CORPUS_DIR) / f"{s}.parquet") for s in SPLITS}
        with tracking.stage_run("tokenize", cfg, objective=objective):
            start = time.perf_counter()
            meta = tokenize_corpus(objective, tokenizer, splits, cfg["tokenize"], cfg["seed"],
                                   Path(paths.tokenized_dir(objective)))
            seconds = time.perf_counter() - start
            corpus_tokens = sum(st["corpus_tokens"] for st in meta["splits"].values())
            report = {"block_size": meta["block_size"], "vocab_size": meta["vocab_size"], "seconds": seconds,
                      "tokens_per_s": corpus_tokens / max(seconds, 1e-9), **meta["splits"]}
            write_json_atomic(paths.tokenize_report(objective), report)
            tracking.log_metrics({"seconds": seconds, "tokens_per_s": report["tokens_per_s"],
                                  **{f"{s}_{k}": v for s, st in meta["splits"].items() for k, v in st.items()}})
        train = meta["splits"]["train"]
        print(f"tokenize: {objective}: {train['blocks']:,} training examples of {meta['block_size']} tokens "
              f"({train['tokens']:,} tokens, packing {train['packing_efficiency']:.3f}) in {seconds:.1f}s "
              f"-> {paths.tokenized_dir(objective)}")

    run_stage("tokenize", body, item="objective", choices=paths.OBJECTIVES, argv=argv)


if __name__ == "__main__":
    main()
