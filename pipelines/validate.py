"""Stage validate: the Great Expectations gate on the cleaned corpus; fails the pipeline on bad data."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from components import paths
from components.registry import tracking
from components.registry.lineage import tag
from components.data.validation import failure_report, validate_corpus, write_validation_report
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        with tracking.stage_run("validate", cfg):
            # GX builds its Data Docs beside our table: a scratch folder, moved in with the report.
            with tempfile.TemporaryDirectory(prefix="lmforge-gx-docs-") as docs:
                result = validate_corpus(Path(paths.CORPUS_DIR), cfg["validate"], data_docs_dir=Path(docs))
                write_validation_report(result, Path(paths.VALIDATION_DIR), data_docs_dir=Path(docs))
            import mlflow

            mlflow.log_artifacts(paths.VALIDATION_DIR, artifact_path="validation")
            mlflow.set_tag(tag("validation_success"), str(result["success"]).lower())
            tracking.log_metrics({"validation_success": int(result["success"])})
        print(f"validate: {result['summary']}")
        if not result["success"]:
            # Exit 1 stops `dvc repro` here: train_tokenizer depends on reports/validation.
            report = failure_report(result, f"{paths.VALIDATION_DIR}/index.html")
            print(f"error: validate: {report}", file=sys.stderr)
            raise SystemExit(1)

    run_stage("validate", body, argv=argv)


if __name__ == "__main__":
    main()
