"""Stage pretrain: one objective's model trained on its tokenized data, saved with its tokenizer."""
from __future__ import annotations

import sys
from pathlib import Path

from components import paths, tracking
from components.io import atomic_dir, write_json_atomic, write_text_atomic
from components.modeling import build_pretraining_model, count_parameters
from components.tokenization import load_tokenizer
from components.training import PretrainData, pretrain
from pipelines._stage import run_stage


def main(argv=None) -> None:
    def body(cfg: dict, objective: str) -> None:
        import torch

        model_cfg, train_cfg = cfg["model"], cfg["pretrain"]
        data_dir = Path(paths.tokenized_dir(objective))
        block_size = PretrainData(data_dir, "train").meta["block_size"]
        if block_size > model_cfg.max_positions:
            raise ValueError(f"tokenize.block_size ({block_size}) exceeds model.max_positions "
                             f"({model_cfg.max_positions}); lower one or raise the other")
        tokenizer = load_tokenizer(paths.tokenizer_dir(paths.ARCHITECTURE[objective]))
        torch.manual_seed(cfg["seed"])
        model = build_pretraining_model(objective, model_cfg, tokenizer)
        curve: list[str] = ["step,loss"]

        def on_log(step: int, metrics: dict) -> None:
            tracking.log_metrics(metrics, step=step)
            if "train_loss" in metrics:
                curve.append(f"{step},{metrics['train_loss']:.6f}")
                print(f"pretrain {objective} step {step}/{train_cfg.max_steps} loss {metrics['train_loss']:.4f} "
                      f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
            else:
                print(f"pretrain {objective} step {step} validation "
                      + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr, flush=True)

        with tracking.stage_run("pretrain", cfg, objective=objective):
            import mlflow

            mlflow.log_param("parameters", count_parameters(model))
            metrics = pretrain(objective, model, tokenizer, data_dir, train_cfg, cfg["seed"], on_log=on_log)
            with atomic_dir(paths.pretrained_dir(objective)) as tmp:
                model.save_pretrained(tmp)  # safetensors
                tokenizer.save_pretrained(tmp)
            report = Path(paths.PRETRAIN_REPORTS) / objective
            summary = {"objective": objective, "parameters": count_parameters(model), **metrics}
            write_json_atomic(report / "metrics.json", summary)
            write_text_atomic(report / "train_loss.csv", "\n".join(curve) + "\n")
            tracking.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        print(f"pretrain: {objective}: validation loss {metrics['val_loss']:.4f} after {metrics['steps']} steps "
              f"({metrics['seconds']:.0f} s, {metrics['tokens_per_s']:,.0f} tok/s, {metrics['dtype']}) "
              f"-> {paths.pretrained_dir(objective)}")

    run_stage("pretrain", body, item="objective", choices=paths.OBJECTIVES, argv=argv)


if __name__ == "__main__":
    main()
