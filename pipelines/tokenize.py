"""Stage tokenize: documents -> packed blocks (clm, mlm) or NSP pairs (mlm_nsp), memory-mappable."""
from __future__ import annotations

from pathlib import Path

from components import paths, tracking
from components.tokenization import load_tokenizer, tokenize_corpus
from pipelines._stage import run_stage
from pipelines.train_tokenizer import iter_texts


def main(argv=None) -> None:
    def body(cfg: dict, objective: str) -> None:
        tokenizer = load_tokenizer(paths.tokenizer_dir(paths.ARCHITECTURE[objective]))
        splits = {s: list(iter_texts(Path(paths.CORPUS_DIR) / f"{s}.parquet")) for s in ("train", "validation")}
        with tracking.stage_run("tokenize", cfg, objective=objective):
            meta = tokenize_corpus(objective, tokenizer, splits, cfg["tokenize"], cfg["seed"],
                                   Path(paths.tokenized_dir(objective)))
            tracking.log_metrics({f"{s}_{k}": v for s, st in meta["splits"].items() for k, v in st.items()})
        train = meta["splits"]["train"]
        print(f"tokenize: {objective}: {train['examples']} training examples of {meta['block_size']} tokens "
              f"({train['tokens']:,} tokens) -> {paths.tokenized_dir(objective)}")

    run_stage("tokenize", body, item="objective", choices=paths.OBJECTIVES, argv=argv)


if __name__ == "__main__":
    main()
