"""Stage pretrain: one objective's model trained on its tokenized data, saved with its tokenizer.

Rerunning after a crash resumes from the newest checkpoint. With `pretrain.nproc_per_node > 1`
the stage relaunches itself under torchrun.
"""
from __future__ import annotations

import os
import sys

from components import paths
from components.objectives import OBJECTIVE_NAMES, OBJECTIVES, check_objectives
from components.registry import tracking
from components.train.distributed import relaunch_under_torchrun
from components.train.run import pretrain_objective
from pipelines._stage import run_stage


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body(cfg: dict, name: str) -> None:
        if cfg["pretrain"].nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
            relaunch_under_torchrun(cfg["pretrain"].nproc_per_node, "pipelines.pretrain", argv)
        metrics = pretrain_objective(
            OBJECTIVES[name], cfg["model"], cfg["pretrain"], cfg["seed"],
            track=lambda **params: tracking.stage_run("pretrain", {**cfg, **params}, objective=name,
                                                      system_metrics=True),
            log_metrics=tracking.log_metrics)
        if metrics is None:  # not rank 0
            return
        print(f"pretrain: {name}: validation loss {metrics['val_loss']:.4f} after {metrics['steps']} steps "
              f"({metrics['seconds']:.0f} s, {metrics['tokens_per_s']:,.0f} tok/s, {metrics['dtype']}"
              f"{', resumed from step %d' % metrics['resumed_from'] if metrics['resumed_from'] else ''}; "
              f"{OBJECTIVES[name].summary_line(metrics)}) -> {paths.pretrained_dir(name)}")

    run_stage("pretrain", body, item="objective", choices=OBJECTIVE_NAMES, argv=argv,
              listed=check_objectives)


if __name__ == "__main__":
    main()
