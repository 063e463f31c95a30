"""Stage finetune: a pretrained model (or its scratch twin) fine-tuned on the downstream task."""
from __future__ import annotations

from components import paths
from components.objectives import FINETUNE_RUN_NAMES, FINETUNE_RUNS
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

    run_stage("finetune", body, item="run", choices=FINETUNE_RUN_NAMES, argv=argv)


if __name__ == "__main__":
    main()
