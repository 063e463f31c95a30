"""Stage ingest: corpus source -> cleaned, split Parquet corpus + the downstream task."""
from __future__ import annotations

import os

# pyarrow's default allocator (mimalloc) keeps the pages it frees, so the peak memory of a
# streamed ingest crept up with corpus size; malloc hands them back. It is read when pyarrow
# loads, hence before the imports (benchmarks/ingest_memory.py measures the stage).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from pathlib import Path  # noqa: E402

from components import paths  # noqa: E402
from components.registry import tracking  # noqa: E402
from components.registry.lineage import corpus_manifest_digest, tag  # noqa: E402
from components.data.corpus import build_corpus  # noqa: E402
from components.data.decontaminate import Report  # noqa: E402
from components.io import write_json_atomic  # noqa: E402
from pipelines._stage import run_stage  # noqa: E402


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        # The work first, the MLflow run after: a bad source then fails in about a second,
        # before MLflow is imported, with nothing written anywhere.
        removed, manifest = Report(), {}
        stats = build_corpus(cfg["data"], cfg["downstream"], cfg["seed"],
                             Path(paths.CORPUS_DIR), Path(paths.DOWNSTREAM_DIR), removed, manifest)
        write_json_atomic(paths.CORPUS_STATS, stats)
        write_json_atomic(paths.CORPUS_MANIFEST, {"source": cfg["data"].source, **manifest})
        write_json_atomic(paths.DECONTAMINATION, {
            "ngram": cfg["data"].decontaminate_ngram, "min_words": cfg["data"].decontaminate_min_words,
            **removed.counts(), "held_out_excluded": stats["held_out_excluded"], "examples": removed.examples})
        with tracking.stage_run("ingest", cfg):
            tracking.log_metrics(stats)
            import mlflow

            # Which installed packages (and versions) builtin:python-docs was read from.
            mlflow.log_artifact(paths.CORPUS_MANIFEST)
            mlflow.set_tag(tag("corpus_manifest_sha256"), corpus_manifest_digest())
        print(f"ingest: {stats['documents']} documents, {stats['characters']:,} characters; "
              f"downstream {stats['downstream_train']}/{stats['downstream_validation']}/{stats['downstream_test']} "
              f"train/val/test examples in {stats['downstream_classes']} classes"
              + (f" (label budget downstream.train_examples: {stats['downstream_train']} of "
                 f"{stats['downstream_train_available']} training examples)"
                 if stats["downstream_train"] < stats["downstream_train_available"] else ""))

    run_stage("ingest", body, argv=argv)


if __name__ == "__main__":
    main()
