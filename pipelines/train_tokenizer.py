"""Stage train_tokenizer: an architecture's tokenizer (byte-level BPE for gpt2, WordPiece for
bert, or a local pretrained one) on the corpus's training split."""
from __future__ import annotations

from pathlib import Path

from components import paths
from components.objectives import ARCHITECTURE_NAMES, ARCHITECTURES
from components.registry import tracking
from components.tokens.tokenization import CorpusTexts, check_pretrained_dir
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, name: str) -> None:
        check_pretrained_dir(name, cfg["tokenizer"])
        with tracking.stage_run("train_tokenizer", cfg, objective=name):
            stats = ARCHITECTURES[name].train_tokenizer(CorpusTexts(Path(paths.CORPUS_DIR) / "train.parquet"),
                                                        cfg["tokenizer"], Path(paths.tokenizer_dir(name)))
            tracking.log_metrics(stats)
        print(f"train_tokenizer: {name} vocabulary of {stats['vocab_size']} -> {paths.tokenizer_dir(name)}")

    run_stage("train_tokenizer", body, item="architecture", choices=ARCHITECTURE_NAMES, argv=argv)


if __name__ == "__main__":
    main()
