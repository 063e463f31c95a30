"""Stage register: every fine-tuned classifier and every pretrained base into the MLflow registry,
with lineage and a model card, `challenger` -> `champion` behind the gate."""
from __future__ import annotations

from components.objectives import finetune_runs
from components.registry import tracking
from components.registry.register import register_all
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        register_all(finetune_runs(cfg["objectives"]), cfg["register"], track=lambda: tracking.stage_run("register", cfg))

    run_stage("register", body, argv=argv)


if __name__ == "__main__":
    main()
