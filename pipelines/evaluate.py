"""Stage evaluate: every fine-tuned model on the held-out test split, against scratch -> comparison report."""
from __future__ import annotations

from components.evaluate.comparison import compare_runs
from components.objectives import finetune_runs
from components.registry import tracking
from pipelines._stage import run_stage


def log_report(files) -> None:
    import mlflow

    for path in files:
        mlflow.log_artifact(path, artifact_path="report")


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        table = compare_runs(finetune_runs(cfg["objectives"]), cfg["evaluate"], cfg["seed"],
                             track=lambda: tracking.stage_run("evaluate", cfg),
                             log_metrics=tracking.log_metrics, log_artifacts=log_report)
        print(table)

    run_stage("evaluate", body, argv=argv)


if __name__ == "__main__":
    main()
