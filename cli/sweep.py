"""`lmforge sweep`: the two curves. One DVC experiment per pretraining budget (`--max-steps`)
or per label budget (`--train-examples`), queued and run by DVC (`dvc exp run --queue`, then
`--run-all`), then delta macro-F1 against scratch (with its CI) plotted against the
pretraining tokens each objective saw (the budget curve) or the labelled examples fine-tuning
saw (the label-efficiency curve).

The experiments run in DVC's temporary copies of the repository, so the workspace is left
as it was; stages whose inputs did not change come back from DVC's run cache instead of
running again (a label budget reruns ingest, whose corpus comes out byte-identical, so no
tokenizer or pretraining runs again: only fine-tuning and evaluate). Each experiment runs up
to `evaluate`: nothing is registered. A rerun of the same sweep replaces its experiments, and
a point already run with the same code, data and params is restored, not retrained.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from components.evaluate.metrics import NOT_TRAINED, verdict

SWEEP_DIR = "reports/sweep"


@dataclass(frozen=True)
class Axis:
    """One curve: the param it varies and where its points go."""

    param: str
    flag: str
    tag: str  # in experiment names: sweep-steps-450, sweep-labels-400
    stem: str  # reports/sweep/<stem>.{json,csv,png}
    zero_means_all: bool


AXES = {
    "max_steps": Axis("pretrain.max_steps", "--max-steps", "steps", "budget_curve", False),
    "train_examples": Axis("downstream.train_examples", "--train-examples", "labels", "label_curve", True),
}


def parse_budgets(text: str, axis: Axis = AXES["max_steps"]) -> list[int]:
    """`--max-steps 150,450,1350` -> [150, 450, 1350] (sorted, no repeats); for
    `--train-examples`, 0 (every labelled example) is allowed and sorts last."""
    example = "100,400,1600,0" if axis.zero_means_all else "150,450,1350"
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()}, key=lambda v: (v == 0, v))
    except ValueError:
        raise ValueError(f"{axis.flag}: {text!r} is not a comma-separated list of whole numbers, "
                         f"e.g. {example}") from None
    low = 0 if axis.zero_means_all else 1
    if not values or min(values) < low:
        raise ValueError(f"{axis.flag}: give at least one value >= {low}, e.g. {example}; got {text!r}")
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


def experiment_name(prefix: str, value: int, axis: Axis = AXES["max_steps"]) -> str:
    return f"{prefix}-{axis.tag}-{value if value or not axis.zero_means_all else 'all'}"


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)


def uncommitted_results(repo: Path) -> list[str]:
    """dvc.lock and the files under reports/ that git does not hold as committed (modified or
    untracked). DVC's queued experiments start from the last commit, so a stage whose uncached
    outs (reports) or lock entry are not there runs again in every experiment: after `make demo`,
    every pretraining stage."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "dvc.lock", "reports"],
                          cwd=repo, capture_output=True, text=True)
    return [line[3:] for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def run_sweep(repo: Path, budgets: list[int], sets: dict[str, str], prefix: str, jobs: int,
              axis: Axis = AXES["max_steps"]) -> list[str]:
    """Queue one experiment per value of `axis` (replacing an earlier one of the same name) and
    run the queue; returns the experiment names. Raises RuntimeError naming the failed step."""
    names = [experiment_name(prefix, value, axis) for value in budgets]
    listed = _dvc(repo, "exp", "list", "--name-only")
    earlier = [n for n in names if n in listed.stdout.split()]
    if earlier:  # not `exp run -f`: that would also rerun every stage, run cache or not
        proc = _dvc(repo, "exp", "remove", *earlier)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc exp remove {' '.join(earlier)} failed: {_last_line(proc)}")
    for value, name in zip(budgets, names):
        overrides = [a for k, v in {**sets, axis.param: str(value)}.items() for a in ("-S", f"{k}={v}")]
        proc = _dvc(repo, "exp", "run", "--queue", "-n", name, *overrides, "evaluate")
        if proc.returncode != 0:
            raise RuntimeError(f"dvc exp run --queue -n {name} failed: {_last_line(proc)}")
        print(f"sweep: queued {name} ({axis.param}={value})", flush=True)
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
    found, failed = {}, []
    for baseline in json.loads(proc.stdout):
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                if rev.get("name") in names and rev.get("error"):
                    failed.append(rev["name"])  # its data is the commit it started from, not a result
                elif rev.get("name") in names and rev.get("data"):
                    found[rev["name"]] = rev["data"]
    if failed:
        raise RuntimeError(f"experiment(s) {', '.join(failed)} failed (`dvc exp run --run-all` exits 0 all the "
                           f"same); `dvc queue logs {failed[0]}` shows why")
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"no results for experiment(s) {', '.join(missing)} in `dvc exp show`; "
                           f"`dvc queue logs {missing[0]}` shows what happened")
    from components.params import resolve

    points = []
    for name in names:
        data = found[name]
        resolved = resolve(data["params"]["params.yaml"]["data"]).configs
        steps = resolved["pretrain"].max_steps
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        # the labelled examples ingest kept; where the experiment did not rerun ingest and
        # carries no corpus stats of its own, the label budget its params name (0 = all)
        stats = (data["metrics"].get("reports/corpus_stats.json") or {}).get("data") or {}
        labels = stats.get("downstream_train", resolved["downstream"].train_examples)
        for run, m in metrics.items():
            if "delta_macro_f1_vs_scratch" not in m:
                continue  # a scratch twin
            points.append({"experiment": name, "objective": run, "max_steps": steps, "train_examples": labels,
                           "tokens_seen": m["tokens_seen"], "flops": m["flops"],
                           "test_macro_f1_seed_mean": m["test_macro_f1_seed_mean"],
                           "delta": m["delta_macro_f1_vs_scratch"], "ci_low": m["delta_ci_low"],
                           "ci_high": m["delta_ci_high"],
                           "verdict": NOT_TRAINED if m.get("did_not_train") else verdict(m["delta_ci_low"],
                                                                                         m["delta_ci_high"]),
                           # rtd: against mlm at equal pretraining FLOPs (evaluate's versus_rival)
                           **{k: v for k, v in m.items() if k.startswith("minus_")}})
    return sorted(points, key=lambda p: (p["objective"], p["max_steps"], p["train_examples"]))


def write_curve(repo: Path, points: list[dict], axis: Axis = AXES["max_steps"]) -> list[Path]:
    """reports/sweep/<budget_curve|label_curve>.{json,csv,png}: the points with their verdicts,
    and the plot (components/evaluate/report.py)."""
    from components.evaluate.report import plot_budget_curve
    from components.io import write_json_atomic, write_text_atomic

    out = repo / SWEEP_DIR
    write_json_atomic(out / f"{axis.stem}.json", {"axis": axis.param, "points": points})
    cols = ["objective", "max_steps", "train_examples", "tokens_seen", "flops", "test_macro_f1_seed_mean", "delta",
            "ci_low", "ci_high", "verdict", "experiment"]
    write_text_atomic(out / f"{axis.stem}.csv",
                      ",".join(cols) + "\n" + "".join(",".join(str(p[c]) for c in cols) + "\n" for p in points))
    plot_budget_curve(points, out / f"{axis.stem}.png", by_labels=axis.zero_means_all)
    return [out / f"{axis.stem}.{ext}" for ext in ("json", "csv", "png")]


def table(points: list[dict]) -> str:
    lines = [f"{'objective':<9} {'max_steps':>9} {'labels':>7} {'tokens':>10} {'delta (CI)':>26}  verdict"]
    for p in points:
        ci = f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
        lines.append(f"{p['objective']:<9} {p['max_steps']:>9} {p['train_examples']:>7} {p['tokens_seen']:>10,} "
                     f"{p['delta']:+.3f} {ci:>19}  {p['verdict']}")
        for key in (k for k in p if k.startswith("minus_") and k.endswith("_macro_f1")):
            rival = key.removeprefix("minus_").removesuffix("_macro_f1")
            lines.append(f"{'':<9} {'':>9} {'':>7} {'':>10} {p[key]:+.3f} [{p[f'minus_{rival}_ci_low']:+.3f}, "
                         f"{p[f'minus_{rival}_ci_high']:+.3f}]  minus {rival} at equal FLOPs")
    return "\n".join(lines)
