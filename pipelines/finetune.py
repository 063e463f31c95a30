"""Stage finetune: a pretrained model (or its scratch twin) fine-tuned on the downstream task."""
from __future__ import annotations

import sys
from pathlib import Path

from components import paths
from components.registry import tracking
from components.train.finetuning import finetune, prepare_classifier_tokenizer, read_labelled
from components.io import atomic_dir, read_json, write_json_atomic
from components.train.models import build_classifier
from components.tokens.tokenization import load_tokenizer
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, run: str) -> None:
        import torch

        architecture = paths.run_architecture(run)
        pretrained = None if run.startswith("scratch-") else Path(paths.pretrained_dir(run))
        if pretrained is not None and not (pretrained / "config.json").exists():
            raise FileNotFoundError(f"{pretrained}: no pretrained model; run the pretrain stage first")
        tokenizer = load_tokenizer(pretrained or paths.tokenizer_dir(architecture))
        prepare_classifier_tokenizer(tokenizer, architecture, cfg["finetune"].max_length)
        downstream = Path(paths.DOWNSTREAM_DIR)
        labels = read_json(downstream / "labels.json")["labels"]
        train = read_labelled(downstream / "train.parquet", labels)
        val = read_labelled(downstream / "validation.parquet", labels)
        ft_cfg = cfg["finetune"]
        if ft_cfg.max_length > cfg["model"].max_positions:
            raise ValueError(f"finetune.max_length ({ft_cfg.max_length}) exceeds model.max_positions "
                             f"({cfg['model'].max_positions})")
        torch.manual_seed(cfg["seed"])
        model = build_classifier(architecture, cfg["model"], tokenizer, labels, pretrained)

        def on_log(step: int, metrics: dict) -> None:
            tracking.log_metrics(metrics, step=step)
            print(f"finetune {run} step {step} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                  file=sys.stderr, flush=True)

        with tracking.stage_run("finetune", cfg, objective=run):
            result = finetune(model, tokenizer, architecture, train, val, len(labels), ft_cfg, cfg["seed"], on_log)
            with atomic_dir(paths.finetuned_dir(run)) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            write_json_atomic(Path(paths.FINETUNE_REPORTS) / f"{run}.json",
                              {"run": run, "architecture": architecture, "pretrained": pretrained is not None, **result})
            tracking.log_metrics({k: v for k, v in result.items() if k != "history"})
        print(f"finetune: {run}: best validation macro-F1 {result['val_macro_f1']:.4f} at epoch {result['best_epoch']} "
              f"({result['seconds']:.0f} s) -> {paths.finetuned_dir(run)}")

    run_stage("finetune", body, item="run", choices=paths.FINETUNE_RUNS, argv=argv)


if __name__ == "__main__":
    main()
