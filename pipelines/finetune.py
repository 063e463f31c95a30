"""Stages finetune and finetune_scratch: a pretrained model (or its architecture's scratch twin)
fine-tuned on the downstream task. dvc.yaml runs this module for both (`--run <objective>` or
`--run scratch-<architecture>`): a scratch twin is a fine-tuning run with the same params. Both
twins always run (dvc.yaml cannot derive the architectures in use from `objectives`)."""
from __future__ import annotations

from components import paths
from components.objectives import FINETUNE_RUN_NAMES, FINETUNE_RUNS, SCRATCH_RUN_NAMES, check_objectives
from components.registry import tracking
from components.train.finetuning import finetune_run
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, run: str) -> None:
        result = finetune_run(FINETUNE_RUNS[run], cfg["model"], cfg["finetune"], cfg["seed"],
                              track=lambda: tracking.stage_run("finetune", cfg, objective=run),
                              log_metrics=tracking.log_metrics)
        print(f"finetune: {run}: lr {result['chosen_lr']:g} of {result['lr_grid']} (validation macro-F1 "
              f"{result['val_macro_f1']:.4f}, seed {result['primary_seed']}); seeds {result['seeds']}: mean "
              f"{result['val_macro_f1_seed_mean']:.4f} ± {result['val_macro_f1_seed_std']:.4f} "
              f"({result['seconds']:.0f} s) -> {paths.finetuned_dir(run)}/seed-<s>")

    run_stage("finetune", body, item="run", choices=FINETUNE_RUN_NAMES, argv=argv,
              listed=lambda objectives: [*check_objectives(objectives), *SCRATCH_RUN_NAMES])


if __name__ == "__main__":
    main()
