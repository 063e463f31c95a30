"""`lmforge run | serve | summary | sweep | check-params | ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cli.registry_cmds import add_registry_commands
from components.objectives import OBJECTIVE_NAMES, check_objectives


def cmd_run(args) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Fail before a Prefect server starts or any stage runs; the overrides are checked too.
    if cmd_check_params(args, overrides={"profile": args.profile, "data.source": args.data_source}, quiet=True):
        return 2
    if args.objective and unlisted_objectives(args):
        return 2
    if args.pools:  # before anything is written: workers must be able to fetch this commit
        from flows.pools import SourceNotShareable, source

        try:
            source(Path(args.repo).resolve(), args.repo_url, args.dvc_remote)
        except SourceNotShareable as e:
            print(f"error: lmforge run --pools: {e}", file=sys.stderr)
            return 2
    from flows.pipeline import pipeline

    results = pipeline(profile=args.profile, objectives=args.objective, data_source=args.data_source,
                       repo_dir=args.repo, pools=args.pools, repo_url=args.repo_url, dvc_remote_url=args.dvc_remote)
    ran = sum(r == "ran" for r in results.values())
    print(f"lmforge run: {ran} stage(s) ran, {len(results) - ran} up to date")
    if "evaluate" not in results:  # a subset of objectives whose comparison could not run yet
        print("lmforge run: evaluate left out (the other objectives are not up to date): no comparison yet")
        return 0
    return cmd_summary(args)


def unlisted_objectives(args) -> list[str]:
    """`--objective` names not in params.yaml's `objectives` (dvc.yaml has no stages for them), said in one line."""
    from components.params import load_params

    listed = load_params(Path(args.repo) / "params.yaml").objectives
    unlisted = [o for o in args.objective if o not in listed]
    if unlisted:
        print(f"error: lmforge run --objective {unlisted[0]}: not in params.yaml objectives [{', '.join(listed)}]; "
              f"add it there to run it", file=sys.stderr)
    return unlisted


def cmd_workers(args) -> int:
    """Set up the work pools, stage deployments and zombie automation, or start a worker."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from cli import workers

    if args.action == "setup":
        for line in workers.setup(Path(args.repo).resolve(), args.pool_type, args.grace):
            print(f"lmforge workers setup: {line}")
        return 0
    if not args.pool or not args.dir:
        print("error: lmforge workers start: --pool (cpu or gpu) and --dir (this worker's clone directory) "
              "are required", file=sys.stderr)
        return 2
    return workers.start_worker(args.pool, Path(args.dir), args.name, args.limit)


def cmd_serve(args) -> int:
    """The flow as a local deployment with a schedule, run by this process: no work pool, no worker."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import pipeline

    parameters = {"profile": args.profile, "objectives": args.objective, "data_source": args.data_source,
                  "repo_dir": str(Path(args.repo).resolve())}
    pipeline.serve(name=args.name, cron=args.cron or None, tags=["lmforge", "serve"],
                   parameters={k: v for k, v in parameters.items() if v is not None})
    return 0


def cmd_sweep(args) -> int:
    """The two curves: one DVC experiment per `--max-steps` or `--train-examples` value (cli/sweep.py)."""
    from cli import sweep

    try:
        if bool(args.max_steps) == bool(args.train_examples):
            raise ValueError("give one of --max-steps (the budget curve) or --train-examples (the label curve); "
                             "fix the other with -S, e.g. -S downstream.train_examples=400")
        axis = sweep.AXES["max_steps" if args.max_steps else "train_examples"]
        budgets = sweep.parse_budgets(args.max_steps or args.train_examples, axis)
        sets = sweep.parse_sets(args.set)
    except ValueError as e:
        print(f"error: sweep: {e}", file=sys.stderr)
        return 2
    import yaml

    typed = {k: yaml.safe_load(v) for k, v in sets.items()}  # as `dvc exp run -S` reads a value
    for value in budgets:  # every point's params, checked before anything is queued
        if cmd_check_params(args, overrides={**typed, axis.param: value}, quiet=True):
            return 2
    repo = Path(args.repo)
    loose = sweep.uncommitted_results(repo)
    if loose:
        print(f"warning: sweep: {len(loose)} result file(s) not committed ({', '.join(loose[:3])}"
              f"{', ...' if len(loose) > 3 else ''}): each experiment starts from the last commit and reruns the "
              "stages they belong to, pretraining included; `git add dvc.lock reports && git commit` first to "
              "reuse them", file=sys.stderr)
    try:
        names = sweep.run_sweep(repo, budgets, sets, args.name, args.jobs, axis)
        points = sweep.collect(repo, names)
    except RuntimeError as e:
        print(f"error: sweep: {e}", file=sys.stderr)
        return 1
    files = sweep.write_curve(repo, points, axis)
    print(sweep.table(points))
    print(f"sweep: {', '.join(str(f.relative_to(repo)) for f in files)}; `dvc exp show` lists the experiments")
    return 0


def summary_rows(repo: Path) -> list[dict]:
    from components import paths

    comparison = json.loads((repo / paths.COMPARISON_JSON).read_text())
    registry_file = repo / paths.REGISTRY_JSON
    registry = {m["objective"]: m for m in json.loads(registry_file.read_text())["models"]} if registry_file.exists() else {}
    scratch = {r["architecture"]: r for r in comparison["runs"] if not r["pretrained"]}
    rows = []
    for r in comparison["runs"]:
        if not r["pretrained"]:
            continue
        s = scratch[r["architecture"]]
        reg = registry.get(r["objective"], {})
        compute = r.get("pretraining_compute", {})
        rows.append({
            "objective": r["objective"],
            "pretraining": r.get("pretraining_metric", ""),
            "F1 per seed": ", ".join(f"{p['test_macro_f1']:.3f}" for p in r["per_seed"]),
            "F1 mean": f"{r['test_macro_f1_seed_mean']:.3f}",
            "scratch F1 mean": f"{s['test_macro_f1_seed_mean']:.3f}",
            "Δ F1 (CI, level)": f"{r['delta_macro_f1_vs_scratch']:+.3f} [{r['delta_ci_low']:+.3f}, "
                                f"{r['delta_ci_high']:+.3f}] {r['delta_ci_level']:.1%}",
            "verdict": r["verdict"],
            "tokens / FLOPs": f"{compute['tokens_seen']:.3g} / {compute['flops']:.3g}" if compute else "-",
            "registered": f"{reg['name']} v{reg['version']} @{','.join(reg['aliases'])}" if reg else "-",
        })
    return rows


def cmd_summary(args) -> int:
    from components import paths

    repo = Path(args.repo)
    try:
        rows = summary_rows(repo)
    except FileNotFoundError as e:
        print(f"error: {e.filename}: missing; run `dvc repro` or `lmforge run` first", file=sys.stderr)
        return 1
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths)))
    comparison = json.loads((repo / paths.COMPARISON_JSON).read_text())
    for run in comparison["runs"]:
        if run.get("did_not_train"):  # its pretraining metric sits at its trivial baseline
            print(f"\n{run['run']}: {run['verdict']}: {run['did_not_train']}; its Δ is no verdict on the objective")
        if "versus_rival" in run:  # rtd against mlm at equal pretraining FLOPs
            v = run["versus_rival"]
            print(f"\n{run['run']} {v['verdict']} at equal pretraining FLOPs: {v['delta_macro_f1']:+.3f} macro-F1 "
                  f"({v['ci_level']:.0%} CI {v['ci_low']:+.3f} to {v['ci_high']:+.3f})")
    if comparison.get("train_examples"):
        print(f"\n{comparison['test_examples']} test examples; fine-tuned on {comparison['train_examples']} "
              "labelled examples (downstream.train_examples).")
    print(f"Seeds {', '.join(map(str, comparison['seeds']))} (the first is the registered model). "
          f"{comparison['ci_method']} Per lr and seed: {paths.FINETUNE_REPORTS}/<run>.json.")
    return 0


def cmd_check_params(args, overrides: dict | None = None, quiet: bool = False) -> int:
    """Every section, every cross-section range; with `overrides` (dotted keys), as the
    file would be after they are written. `--show`: every resolved value and its source."""
    import tempfile

    import yaml

    from components.params import ConfigError, load_params, read_params

    path = Path(args.repo) / "params.yaml"
    try:
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if overrides:
            params = read_params(path)
            for dotted, value in overrides.items():
                *parents, leaf = dotted.split(".")
                node = params
                for key in parents:
                    if not isinstance(node.get(key), dict):
                        node[key] = {}
                    node = node[key]
                node[leaf] = value
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
                resolved = load_params(Path(tmp) / "params.yaml")
        else:
            resolved = load_params(path)
        check_objectives(resolved.objectives)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "show", False):
        print("\n".join(show_lines(resolved)))
    elif not quiet:
        print("params.yaml: ok")
    return 0


def show_lines(resolved) -> list[str]:
    """`key = value   (source)` per resolved param, the sources aligned."""
    def scalar(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return f"[{', '.join(map(str, value))}]"
        if isinstance(value, str) and (not value or value.strip() != value):
            return repr(value)
        return str(value)

    pairs = [(f"{key} = {scalar(value)}", resolved.sources[key]) for key, value in resolved.values().items()]
    width = max(len(text) for text, _ in pairs)
    return [f"{text.ljust(width)}   ({source})" for text, source in pairs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lmforge", description="Pretrain, compare and register language models.")
    parser.add_argument("--repo", default=".", help="the lmforge checkout (default: .)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline as a Prefect flow (stages through DVC)")
    run.add_argument("--profile", choices=["tiny", "demo", "gpu-small"], help="set `profile` in params.yaml")
    run.add_argument("--data-source", help="set `data.source` in params.yaml")
    run.add_argument("--pools", action="store_true",
                     help="run each stage on a worker of its work pool (dvc.yaml meta pool: cpu or gpu), "
                          "independent objectives at once; needs `lmforge workers setup` on the Prefect server")
    run.add_argument("--repo-url", help="--pools: the git URL workers fetch this commit from (default: this checkout)")
    run.add_argument("--dvc-remote", help="--pools: the DVC remote URL workers share (default: the default remote)")
    serve = sub.add_parser("serve", help="serve the flow as a scheduled deployment from this process (no work pool)")
    serve.add_argument("--name", default="lmforge-serve", help="deployment name (default: lmforge-serve)")
    serve.add_argument("--cron", default="0 3 * * *", help="schedule, UTC (default: nightly at 03:00; '' for none)")
    for p in (run, serve):
        p.add_argument("--objective", action="append", choices=OBJECTIVE_NAMES,
                       help="run only what this objective needs (repeatable; one of params.yaml's `objectives`; "
                            "default: all of them)")
    serve.add_argument("--profile", choices=["tiny", "demo", "gpu-small"], help="set `profile` in params.yaml")
    serve.add_argument("--data-source", help="set `data.source` in params.yaml")
    run.set_defaults(func=cmd_run)
    wk = sub.add_parser("workers", help="work pools for `run --pools`: `setup` once per Prefect server, `start` a worker")
    wk.add_argument("action", choices=["setup", "start"])
    wk.add_argument("--pool-type", default="process", help="setup: the pools' worker type (default: process)")
    wk.add_argument("--grace", type=int, default=90,
                    help="setup: seconds without a heartbeat before a flow run is marked Crashed (default: 90)")
    wk.add_argument("--pool", choices=["cpu", "gpu"], help="start: the pool to serve")
    wk.add_argument("--dir", help="start: this worker's own clone directory (created if missing)")
    wk.add_argument("--name", help="start: the worker's name")
    wk.add_argument("--limit", type=int, help="start: flow runs at once (default: 1; its stages share one clone directory)")
    wk.set_defaults(func=cmd_workers)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("summary", help="print the results table").set_defaults(func=cmd_summary)
    sweep = sub.add_parser("sweep", help="the budget or label curve: delta vs scratch by pretraining steps or "
                                         "labelled examples, as DVC experiments")
    sweep.add_argument("--max-steps", help="pretrain.max_steps values, comma-separated (e.g. 150,450,1350)")
    sweep.add_argument("--train-examples", help="downstream.train_examples values, comma-separated, 0 = all "
                                                "(e.g. 100,400,1600,0)")
    sweep.add_argument("-S", "--set", action="append", metavar="KEY=VALUE",
                       help="another param for every point, as `dvc exp run -S` (repeatable)")
    sweep.add_argument("--name", default="sweep", help="experiment name prefix (default: sweep -> sweep-steps-450, sweep-labels-400)")
    sweep.add_argument("--jobs", type=int, default=1, help="experiments run at once (default: 1)")
    sweep.set_defaults(func=cmd_sweep)
    check = sub.add_parser("check-params", help="validate params.yaml without running anything")
    check.add_argument("--show", action="store_true",
                       help="print every resolved value and where it came from (default, profile, params.yaml)")
    check.set_defaults(func=cmd_check_params)
    add_registry_commands(sub)  # promote, rollback, predict, lineage (cli/registry_cmds.py)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
