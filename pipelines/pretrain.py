"""Stage pretrain: one objective's model trained on its tokenized data, saved with its tokenizer.

Checkpoints go to checkpoints/pretrain/<objective> (a `persist: true` DVC out), so rerunning
after a crash resumes from the newest one. With `pretrain.nproc_per_node > 1` the stage
relaunches itself under torchrun.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from components import paths
from components.registry import tracking
from components.train.checkpoint import Checkpointer
from components.train.distributed import is_main_process
from components.train.flops import device_peak_flops, flops_per_token, mfu
from components.io import atomic_dir, write_json_atomic, write_text_atomic
from components.train.models import build_pretraining_model, count_parameters
from components.tokens.tokenization import load_tokenizer
from components.train.pretraining import PretrainData, pretrain
from pipelines._stage import run_stage


def run_fingerprint(objective: str, cfg: dict, data_dir: Path) -> str:
    """What a checkpoint must match to be resumed: objective, configs, seed, data."""
    data = (data_dir / "meta.json").read_text()
    sizes = sorted((p.name, p.stat().st_size) for p in data_dir.glob("*.npy"))
    keyed = {"objective": objective, "model": asdict(cfg["model"]), "seed": cfg["seed"], "data": data, "sizes": sizes,
             "pretrain": {k: v for k, v in asdict(cfg["pretrain"]).items()
                          if k not in ("log_every", "keep_checkpoints", "device", "nproc_per_node")}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process with torchrun running the same stage on `nproc` processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "pipelines.pretrain", *argv]
    print(f"pretrain: relaunching under torchrun: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body(cfg: dict, objective: str) -> None:
        import torch

        model_cfg, train_cfg = cfg["model"], cfg["pretrain"]
        if train_cfg.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
            relaunch_under_torchrun(train_cfg.nproc_per_node, argv)
        data_dir = Path(paths.tokenized_dir(objective))
        block_size = PretrainData(data_dir, "train").meta["block_size"]
        if block_size > model_cfg.max_positions:
            raise ValueError(f"tokenize.block_size ({block_size}) exceeds model.max_positions "
                             f"({model_cfg.max_positions}); lower one or raise the other")
        tokenizer = load_tokenizer(paths.tokenizer_dir(paths.ARCHITECTURE[objective]))
        torch.manual_seed(cfg["seed"])
        model = build_pretraining_model(objective, model_cfg, tokenizer)
        checkpointer = Checkpointer(paths.checkpoint_dir(objective), train_cfg.checkpoint_every,
                                    train_cfg.keep_checkpoints, run_fingerprint(objective, cfg, data_dir))
        main_process = is_main_process()
        per_token = flops_per_token(model, block_size, train_cfg.mlm_probability,
                                    PretrainData(data_dir, "train").meta["splits"]["train"]["packing_efficiency"])
        peak = device_peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        clock: dict = {}

        def on_log(step: int, metrics: dict) -> None:
            if "train_loss" in metrics:
                # Throughput is per process; MFU only where the device's peak is known (GPUs).
                utilisation = mfu(metrics["tokens_per_s"], per_token, peak)
                if utilisation is not None:
                    metrics = {**metrics, "mfu": utilisation}
                t0, s0 = clock.setdefault("start", (time.perf_counter(), step))
                eta = (time.perf_counter() - t0) / max(step - s0, 1) * (train_cfg.max_steps - step)
                print(f"pretrain {objective} step {step}/{train_cfg.max_steps} loss {metrics['train_loss']:.4f} "
                      f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s"
                      + (f" mfu {utilisation:.1%}" if utilisation is not None else "")
                      + f" eta {eta:.0f}s", file=sys.stderr, flush=True)
            tracking.log_metrics(metrics, step=step)
            if "train_loss" not in metrics:
                print(f"pretrain {objective} step {step} validation "
                      + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr, flush=True)

        run = (tracking.stage_run("pretrain", cfg, objective=objective, system_metrics=True)
               if main_process else contextlib.nullcontext())
        with run:
            if main_process:
                import mlflow

                mlflow.log_param("parameters", count_parameters(model))
                resume = checkpointer.latest()
                if resume is not None:
                    print(f"pretrain: {objective}: resuming from {resume}", file=sys.stderr, flush=True)
            metrics = pretrain(objective, model, tokenizer, data_dir, train_cfg, cfg["seed"], on_log=on_log,
                               checkpointer=checkpointer)
            if not main_process:
                return
            with atomic_dir(paths.pretrained_dir(objective)) as tmp:
                model.save_pretrained(tmp)  # safetensors
                tokenizer.save_pretrained(tmp)
            curve, history = metrics.pop("curve"), metrics.pop("history")
            report = Path(paths.PRETRAIN_REPORTS) / objective
            summary = {"objective": objective, "parameters": count_parameters(model), **metrics}
            write_json_atomic(report / "metrics.json", summary)
            write_text_atomic(report / "train_loss.csv",
                              "step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in curve))
            write_json_atomic(report / "validation.json", history)
            tracking.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        print(f"pretrain: {objective}: validation loss {metrics['val_loss']:.4f} after {metrics['steps']} steps "
              f"({metrics['seconds']:.0f} s, {metrics['tokens_per_s']:,.0f} tok/s, {metrics['dtype']}"
              f"{', resumed from step %d' % metrics['resumed_from'] if metrics['resumed_from'] else ''}) "
              f"-> {paths.pretrained_dir(objective)}")

    run_stage("pretrain", body, item="objective", choices=paths.OBJECTIVES, argv=argv)


if __name__ == "__main__":
    main()
