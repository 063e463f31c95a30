"""Stage train_tokenizer: byte-level BPE (gpt2) or WordPiece (bert) on the training split."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from components import paths, tracking
from components.tokenization import train_tokenizer
from pipelines._stage import run_stage


def iter_texts(parquet_path: Path, batch_rows: int = 2048):
    """Texts streamed by record batch, so tokenizer training never holds the corpus twice."""
    if not parquet_path.exists():
        raise FileNotFoundError(f"{parquet_path}: missing; run the ingest stage first")
    for batch in pq.ParquetFile(parquet_path).iter_batches(batch_size=batch_rows, columns=["text"]):
        yield from batch.column(0).to_pylist()


def main(argv=None) -> None:
    def body(cfg: dict, architecture: str) -> None:
        with tracking.stage_run("train_tokenizer", cfg, objective=architecture):
            stats = train_tokenizer(architecture, iter_texts(Path(paths.CORPUS_DIR) / "train.parquet"),
                                    cfg["tokenizer"], Path(paths.tokenizer_dir(architecture)))
            tracking.log_metrics(stats)
        print(f"train_tokenizer: {architecture} vocabulary of {stats['vocab_size']} -> {paths.tokenizer_dir(architecture)}")

    run_stage("train_tokenizer", body, item="architecture", choices=paths.ARCHITECTURES, argv=argv)


if __name__ == "__main__":
    main()
