"""Stage ingest: corpus source -> cleaned, split Parquet corpus + the downstream task."""
from __future__ import annotations

from pathlib import Path

from components import paths, tracking
from components.corpus import build_corpus
from components.io import write_json_atomic
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        with tracking.stage_run("ingest", cfg):
            stats = build_corpus(cfg["data"], cfg["downstream"], cfg["seed"],
                                 Path(paths.CORPUS_DIR), Path(paths.DOWNSTREAM_DIR))
            write_json_atomic(paths.CORPUS_STATS, stats)
            tracking.log_metrics(stats)
        print(f"ingest: {stats['documents']} documents, {stats['characters']:,} characters; "
              f"downstream {stats['downstream_train']}/{stats['downstream_validation']}/{stats['downstream_test']} "
              f"train/val/test examples in {stats['downstream_classes']} classes")

    run_stage("ingest", body, argv=argv)


if __name__ == "__main__":
    main()
