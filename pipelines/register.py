"""Stage register: each objective's fine-tuned classifier into the MLflow registry, gated promotion."""
from __future__ import annotations

from pathlib import Path

from components import paths, tracking
from components.io import read_json, write_json_atomic
from components.lineage import model_lineage
from components.registry import model_name, register_classifier
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, _item) -> None:
        reg_cfg = cfg["register"]
        report = read_json(paths.COMPARISON_JSON)
        by_run = {r["run"]: r for r in report["runs"]}
        decisions = []
        with tracking.stage_run("register", cfg):
            for objective in paths.OBJECTIVES:
                entry = by_run[objective]
                metrics = {k: entry[k] for k in ("test_accuracy", "test_macro_f1")}
                if "delta_macro_f1_vs_scratch" in entry:
                    metrics["delta_macro_f1_vs_scratch"] = entry["delta_macro_f1_vs_scratch"]
                tags = {f"lmforge.{k}": str(v) for k, v in model_lineage(objective).items()}
                decision = register_classifier(model_name(reg_cfg, objective), Path(paths.finetuned_dir(objective)),
                                               metrics, tags, reg_cfg)
                decisions.append({"objective": objective, **decision})
                print(f"register: {decision['name']} v{decision['version']} aliases {','.join(decision['aliases'])}: "
                      f"{decision['reason']}")
            write_json_atomic(paths.REGISTRY_JSON, {"models": decisions})
            import mlflow

            mlflow.log_artifact(paths.REGISTRY_JSON)

    run_stage("register", body, argv=argv)


if __name__ == "__main__":
    main()
