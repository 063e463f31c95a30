"""`lmforge sweep`: the budget curve. One DVC experiment per pretraining budget, queued and run
by DVC (`dvc exp run --queue`, then `--run-all`), then delta macro-F1 against scratch (with
its CI) plotted against the pretraining tokens each objective saw.

The experiments run in DVC's temporary copies of the repository, so the workspace is left
as it was; stages whose inputs did not change (ingest, tokenizers, tokenize, the scratch
twins) come back from DVC's run cache instead of running again. Each experiment runs up to
`evaluate`: nothing is registered. A rerun of the same sweep replaces its experiments, and a
budget already run with the same code, data and params is restored, not retrained.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from components.evaluate.metrics import NOT_TRAINED, verdict

SWEEP_DIR = "reports/sweep"


def parse_budgets(text: str) -> list[int]:
    """`--max-steps 150,450,1350` -> [150, 450, 1350] (sorted, no repeats)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--max-steps: {text!r} is not a comma-separated list of whole numbers, "
                         f"e.g. 150,450,1350") from None
    if not values or values[0] < 1:
        raise ValueError(f"--max-steps: give at least one step count >= 1, got {text!r}")
    return values


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`-S key=value` pairs, as `dvc exp run -S` takes them."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-S {item!r}: write a dotted param and a value, e.g. -S finetune.seeds=3")
        out[key.strip()] = value
    return out


def experiment_name(prefix: str, steps: int) -> str:
    return f"{prefix}-steps-{steps}"


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)


def run_sweep(repo: Path, budgets: list[int], sets: dict[str, str], prefix: str, jobs: int) -> list[str]:
    """Queue one experiment per budget (replacing an earlier one of the same name) and run the
    queue; returns the experiment names. Raises RuntimeError naming the failed step."""
    names = [experiment_name(prefix, steps) for steps in budgets]
    listed = _dvc(repo, "exp", "list", "--name-only")
    earlier = [n for n in names if n in listed.stdout.split()]
    if earlier:  # not `exp run -f`: that would also rerun every stage, run cache or not
        proc = _dvc(repo, "exp", "remove", *earlier)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc exp remove {' '.join(earlier)} failed: {_last_line(proc)}")
    for steps, name in zip(budgets, names):
        overrides = [a for k, v in {**sets, "pretrain.max_steps": str(steps)}.items() for a in ("-S", f"{k}={v}")]
        proc = _dvc(repo, "exp", "run", "--queue", "-n", name, *overrides, "evaluate")
        if proc.returncode != 0:
            raise RuntimeError(f"dvc exp run --queue -n {name} failed: {_last_line(proc)}")
        print(f"sweep: queued {name} (pretrain.max_steps={steps})", flush=True)
    print(f"sweep: running {len(names)} experiment(s), {jobs} at a time (dvc exp run --run-all)", flush=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--run-all", "-j", str(jobs)], cwd=repo)
    if proc.returncode != 0:
        raise RuntimeError("dvc exp run --run-all failed; `dvc queue status` lists the failed experiments and "
                           "`dvc queue logs <name>` shows why")
    return names


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def collect(repo: Path, names: list[str]) -> list[dict]:
    """One point per (experiment, objective) from `dvc exp show --json`: the budget, the tokens
    the objective saw, delta macro-F1 against scratch and its CI (reports/metrics.json)."""
    proc = _dvc(repo, "exp", "show", "--json")
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp show --json failed: {_last_line(proc)}")
    found = {}
    for baseline in json.loads(proc.stdout):
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                if rev.get("name") in names and rev.get("data"):
                    found[rev["name"]] = rev["data"]
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"no results for experiment(s) {', '.join(missing)} in `dvc exp show`; "
                           f"`dvc queue logs {missing[0]}` shows what happened")
    points = []
    for name in names:
        data = found[name]
        steps = int(_get(data["params"]["params.yaml"]["data"], "pretrain.max_steps"))
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        for run, m in metrics.items():
            if "delta_macro_f1_vs_scratch" not in m:
                continue  # a scratch twin
            points.append({"experiment": name, "objective": run, "max_steps": steps,
                           "tokens_seen": m["tokens_seen"], "flops": m["flops"],
                           "test_macro_f1_seed_mean": m["test_macro_f1_seed_mean"],
                           "delta": m["delta_macro_f1_vs_scratch"], "ci_low": m["delta_ci_low"],
                           "ci_high": m["delta_ci_high"],
                           "verdict": NOT_TRAINED if m.get("did_not_train") else verdict(m["delta_ci_low"],
                                                                                         m["delta_ci_high"]),
                           # rtd: against mlm at equal pretraining FLOPs (evaluate's versus_rival)
                           **{k: v for k, v in m.items() if k.startswith("minus_")}})
    return sorted(points, key=lambda p: (p["objective"], p["max_steps"]))


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def write_curve(repo: Path, points: list[dict]) -> list[Path]:
    """reports/sweep/budget_curve.{json,csv,png}: the points with their verdicts, and the plot
    (components/evaluate/report.py)."""
    from components.evaluate.report import plot_budget_curve
    from components.io import write_json_atomic, write_text_atomic

    out = repo / SWEEP_DIR
    write_json_atomic(out / "budget_curve.json", {"points": points})
    cols = ["objective", "max_steps", "tokens_seen", "flops", "test_macro_f1_seed_mean", "delta", "ci_low",
            "ci_high", "verdict", "experiment"]
    write_text_atomic(out / "budget_curve.csv",
                      ",".join(cols) + "\n" + "".join(",".join(str(p[c]) for c in cols) + "\n" for p in points))
    plot_budget_curve(points, out / "budget_curve.png")
    return [out / "budget_curve.json", out / "budget_curve.csv", out / "budget_curve.png"]


def table(points: list[dict]) -> str:
    lines = [f"{'objective':<9} {'max_steps':>9} {'tokens':>10} {'delta (CI)':>26}  verdict"]
    for p in points:
        ci = f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
        lines.append(f"{p['objective']:<9} {p['max_steps']:>9} {p['tokens_seen']:>10,} "
                     f"{p['delta']:+.3f} {ci:>19}  {p['verdict']}")
        for key in (k for k in p if k.startswith("minus_") and k.endswith("_macro_f1")):
            rival = key.removeprefix("minus_").removesuffix("_macro_f1")
            lines.append(f"{'':<9} {'':>9} {'':>10} {p[key]:+.3f} [{p[f'minus_{rival}_ci_low']:+.3f}, "
                         f"{p[f'minus_{rival}_ci_high']:+.3f}]  minus {rival} at equal FLOPs")
    return "\n".join(lines)
