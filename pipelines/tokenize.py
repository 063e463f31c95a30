"""Stage tokenize: documents -> packed blocks (clm, mlm) or NSP pairs (mlm_nsp), memory-mappable.

Stats go to reports/tokenize/<objective>.json (DVC metrics) and to MLflow.
"""
from __future__ import annotations

from components import paths
from components.objectives import OBJECTIVE_NAMES, OBJECTIVES, check_objectives
from components.registry import tracking
from components.tokens.tokenization import tokenize_objective
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, name: str) -> None:
        report = tokenize_objective(OBJECTIVES[name], cfg["tokenize"], cfg["seed"],
                                    track=lambda: tracking.stage_run("tokenize", cfg, objective=name),
                                    log_metrics=tracking.log_metrics)
        train = report["train"]
        print(f"tokenize: {name}: {train['blocks']:,} training examples of {report['block_size']} tokens "
              f"({train['tokens']:,} tokens, packing {train['packing_efficiency']:.3f}) in {report['seconds']:.1f}s "
              f"-> {paths.tokenized_dir(name)}")

    run_stage("tokenize", body, item="objective", choices=OBJECTIVE_NAMES, argv=argv,
              listed=check_objectives)


if __name__ == "__main__":
    main()
