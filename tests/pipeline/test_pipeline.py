"""The whole pipeline on profile tiny through `dvc repro`, in a temporary git repository made
from this working tree with its own SQLite MLflow, so it never touches the developer's checkout.
(The same pipeline through the Prefect flow, deployed on a real server: test_prefect_server.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components import paths
from components.evaluate.metrics import NOT_TRAINED
from components.objectives import ARCHITECTURE_NAMES, FINETUNE_RUN_NAMES, OBJECTIVE_NAMES, OBJECTIVES
from pipeline_repo import commit_results, dvc, env_for

pytestmark = pytest.mark.slow


def test_tokenizers_and_models_load_with_auto_classes(dvc_repo):
    from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining,
                              AutoModelForSequenceClassification, AutoTokenizer)

    for arch in ARCHITECTURE_NAMES:
        tok = AutoTokenizer.from_pretrained(str(dvc_repo / paths.tokenizer_dir(arch)))
        assert tok.pad_token_id is not None and len(tok) >= 300
    kinds = {"clm": AutoModelForCausalLM, "mlm": AutoModelForMaskedLM, "mlm_nsp": AutoModelForPreTraining}
    for objective, auto in kinds.items():
        model = auto.from_pretrained(str(dvc_repo / paths.pretrained_dir(objective)))
        assert type(model).__name__ == {"clm": "GPT2LMHeadModel", "mlm": "BertForMaskedLM",
                                        "mlm_nsp": "BertForPreTraining"}[objective]
        assert (dvc_repo / paths.pretrained_dir(objective) / "model.safetensors").exists()
    labels = json.loads((dvc_repo / paths.DOWNSTREAM_DIR / "labels.json").read_text())["labels"]
    for run in FINETUNE_RUN_NAMES:
        selection = json.loads((dvc_repo / paths.selection_json(run)).read_text())
        assert len(selection["seeds"]) == 2 and selection["primary"] == f"seed-{selection['seeds'][0]}"  # tiny: 2 seeds
        for seed in selection["seeds"]:
            model = AutoModelForSequenceClassification.from_pretrained(str(dvc_repo / paths.seed_model_dir(run, seed)))
            assert model.config.num_labels == len(labels) >= 5


def test_metrics_for_every_objective_and_scratch(dvc_repo):
    report = json.loads((dvc_repo / paths.COMPARISON_JSON).read_text())
    runs = {r["run"]: r for r in report["runs"]}
    assert set(runs) == set(FINETUNE_RUN_NAMES)
    for run, r in runs.items():  # the report schema users and dashboards read
        assert r["objective"] in ("clm", "mlm", "mlm_nsp", "rtd", "scratch") and r["architecture"] in ("gpt2", "bert")
        assert isinstance(r["pretrained"], bool) and r["pretrained"] == (r["objective"] != "scratch")
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["test_macro_f1"] <= 1.0
        assert r["pretrained"] == (not run.startswith("scratch-"))
        assert len(r["confusion_matrix"]) == len(report["labels"]) and set(r["per_class"]) == set(report["labels"])
        assert [p["seed"] for p in r["per_seed"]] == report["seeds"] and r["primary_seed"] == report["seeds"][0]
        assert r["test_macro_f1"] == r["per_seed"][0]["test_macro_f1"]  # the primary (registered) model's
        if r["pretrained"]:
            assert r["delta_ci_low"] <= r["delta_macro_f1_vs_scratch"] <= r["delta_ci_high"]
            assert isinstance(r["beats_scratch"], bool) and 0.95 < r["delta_ci_level"] < 1
            # the tiny profile's 8 steps may leave an objective at its trivial baseline: then no verdict on it
            assert r["verdict"] == NOT_TRAINED if r["did_not_train"] else r["verdict"] in (
                "pays off", "hurts", "cannot tell at this budget")
            scratch = runs[f"scratch-{r['architecture']}"]
            # Paired by seed over the same seeds: the mean of the differences is the difference of the means.
            assert r["delta_macro_f1_vs_scratch"] == pytest.approx(
                r["test_macro_f1_seed_mean"] - scratch["test_macro_f1_seed_mean"])
            assert r["pretraining_compute"]["tokens_seen"] > 0 and r["pretraining_compute"]["flops"] > 0
    assert {r["objective"] for r in report["runs"]} == {"clm", "mlm", "mlm_nsp", "rtd", "scratch"}
    # rtd against mlm at equal pretraining FLOPs: paired by seed, its CI, both FLOPs, in the markdown too.
    versus = runs["rtd"]["versus_rival"]
    assert versus["rival"] == "mlm" and versus["ci_low"] <= versus["delta_macro_f1"] <= versus["ci_high"]
    assert versus["delta_macro_f1"] == pytest.approx(runs["rtd"]["test_macro_f1_seed_mean"]
                                                     - runs["mlm"]["test_macro_f1_seed_mean"])
    assert versus["flops"] == runs["rtd"]["pretraining_compute"]["flops"] <= versus["rival_flops"]
    assert versus["flops_ratio"] > 0.8  # equal FLOPs: the most whole steps within mlm's
    assert "**rtd** vs **mlm** at equal pretraining FLOPs" in (dvc_repo / paths.COMPARISON_MD).read_text()
    assert 0.0 <= report["majority_baseline"]["test_macro_f1"] <= 1.0
    pre = {o: json.loads((dvc_repo / paths.PRETRAIN_REPORTS / o / "metrics.json").read_text()) for o in OBJECTIVE_NAMES}
    assert pre["clm"]["val_perplexity"] > 1.0
    assert 0.0 <= pre["mlm"]["val_mlm_accuracy"] <= 1.0
    assert 0.0 <= pre["mlm_nsp"]["val_nsp_accuracy"] <= 1.0
    for name in OBJECTIVE_NAMES:  # every metric beside its trivial baseline, in the report too
        for metric, baseline in OBJECTIVES[name].baselines.items():
            assert metric in pre[name] and baseline in pre[name]
            assert runs[name]["pretraining"][baseline] == pre[name][baseline]
    assert 0.5 <= pre["mlm_nsp"]["val_nsp_baseline_accuracy"] <= 1.0
    assert 0.5 <= pre["rtd"]["val_rtd_baseline_accuracy"] < 1.0 and 0.0 <= pre["rtd"]["val_rtd_accuracy"] <= 1.0
    assert pre["rtd"]["steps"] < pre["mlm"]["steps"] and pre["rtd"]["trained_parameters"] > pre["rtd"]["parameters"]
    shown = dvc(dvc_repo, "metrics", "show", "--json").stdout
    assert "test_macro_f1" in shown and "val_perplexity" in shown
    plots = json.loads(dvc(dvc_repo, "plots", "show", "--json").stdout)["data"]
    assert paths.COMPARISON_PNG in plots and paths.LOSS_PNG in plots  # the loss curves in one figure
    assert all(f"{paths.PRETRAIN_REPORTS}/{o}/train_loss.csv" in plots for o in OBJECTIVE_NAMES)
    assert all(isinstance(r["did_not_train"], (str, type(None))) for r in report["runs"] if r["pretrained"])


def test_registry_has_a_champion_per_objective_loadable_in_a_fresh_process(dvc_repo):
    registry = json.loads((dvc_repo / paths.REGISTRY_JSON).read_text())["models"]
    assert [m["run"] for m in registry] == list(FINETUNE_RUN_NAMES)
    assert all("champion" in m["aliases"] and "challenger" in m["aliases"] for m in registry)
    code = (
        "import mlflow, sys\n"
        "for name in sys.argv[1:]:\n"
        "    pipe = mlflow.transformers.load_model(f'models:/{name}@champion')\n"
        "    print(name, pipe(['Return the number of items in a container.'])[0]['label'])\n"
    )
    names = [m["name"] for m in registry]
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=dvc_repo, env=env_for(dvc_repo),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = json.loads((dvc_repo / paths.DOWNSTREAM_DIR / "labels.json").read_text())["labels"]
    printed = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert set(printed) == set(names) and all(label in labels for label in printed.values())


def test_second_repro_is_up_to_date_and_the_sweep_reruns_only_what_a_budget_changes(dvc_repo):
    """`lmforge sweep` on the tiny profile, one point (6 steps; the workspace ran 8): a queued
    DVC experiment in which only pretraining and what follows it runs (the data stages and
    the scratch twins come from DVC's run cache), up to evaluate. The workspace is left as it
    was, and the curve has the point with its CI and compute."""
    again = dvc(dvc_repo, "repro")
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower()
    commit_results(dvc_repo)
    before = {rel: (dvc_repo / rel).read_text() for rel in ("params.yaml", paths.COMPARISON_METRICS)}
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--repo", str(dvc_repo), "sweep", "--max-steps", "6"],
                          cwd=dvc_repo, env=env_for(dvc_repo), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {rel: (dvc_repo / rel).read_text() for rel in before} == before
    log = dvc(dvc_repo, "queue", "logs", "sweep-steps-6").stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert ran == {f"pretrain@{o}" for o in OBJECTIVE_NAMES} | {f"finetune@{o}" for o in OBJECTIVE_NAMES} \
        | {"evaluate"}, log[-3000:]
    points = json.loads((dvc_repo / "reports/sweep/budget_curve.json").read_text())["points"]
    assert sorted(p["objective"] for p in points) == sorted(OBJECTIVE_NAMES)
    workspace = json.loads(before[paths.COMPARISON_METRICS])
    by_objective = {p["objective"]: p for p in points}
    for p in points:
        assert p["max_steps"] == 6 and p["experiment"] == "sweep-steps-6"
        if p["objective"] == "rtd":  # the steps of mlm's FLOPs at the budget, and the comparison with it
            assert p["flops"] <= by_objective["mlm"]["flops"] and "minus_mlm_macro_f1" in p
        else:
            assert p["tokens_seen"] * 8 == workspace[p["objective"]]["tokens_seen"] * 6
        assert p["ci_low"] <= p["delta"] <= p["ci_high"]
        assert p["verdict"] in ("pays off", "hurts", "cannot tell at this budget", NOT_TRAINED)
    assert (dvc_repo / "reports/sweep/budget_curve.png").stat().st_size > 1000
    assert len((dvc_repo / "reports/sweep/budget_curve.csv").read_text().splitlines()) == 1 + len(points)


def test_the_label_sweep_reruns_only_fine_tuning_and_keeps_the_corpus(dvc_repo):
    """`lmforge sweep --train-examples` on the tiny profile, one point (40 of the 120 labels):
    ingest reruns and writes the same corpus bytes, so no tokenizer or pretraining runs again;
    only fine-tuning and evaluate do, and the label curve has the point with its CI."""
    commit_results(dvc_repo)
    before = (dvc_repo / "dvc.lock").read_text()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--repo", str(dvc_repo), "sweep", "--train-examples", "40"],
                          cwd=dvc_repo, env=env_for(dvc_repo), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (dvc_repo / "dvc.lock").read_text() == before
    log = dvc(dvc_repo, "queue", "logs", "sweep-labels-40").stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    # The corpus comes out byte-identical, so nothing between it and fine-tuning runs again:
    # no validate, tokenizer, tokenize or pretraining stage (the results are committed).
    assert ran == {"ingest", "evaluate"} | {f"finetune@{o}" for o in OBJECTIVE_NAMES} \
        | {f"finetune_scratch@{a}" for a in ARCHITECTURE_NAMES}, log[-3000:]
    points = json.loads((dvc_repo / "reports/sweep/label_curve.json").read_text())["points"]
    assert sorted(p["objective"] for p in points) == sorted(OBJECTIVE_NAMES)
    for p in points:
        assert p["train_examples"] == 40 and p["experiment"] == "sweep-labels-40" and p["max_steps"] == 8
        assert p["ci_low"] <= p["delta"] <= p["ci_high"]
    assert (dvc_repo / "reports/sweep/label_curve.png").stat().st_size > 1000


def test_every_downstream_mlflow_run_records_the_corpus_hash_from_dvc_lock(dvc_run):
    import mlflow
    import yaml

    repo, _ = dvc_run
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    corpus_md5 = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == paths.CORPUS_DIR)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lmforge")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    downstream = [r for r in runs if r.data.tags.get("lmforge.stage") not in ("ingest",)]
    assert len(downstream) >= 16
    assert {r.data.tags.get("lmforge.corpus_md5") for r in downstream} == {corpus_md5}
    pretrain = [r for r in runs if r.data.tags.get("lmforge.stage") == "pretrain"]
    for r in pretrain:
        objective = r.data.tags["lmforge.objective"]
        tokenized = next(o["md5"] for o in lock["stages"][f"tokenize@{objective}"]["outs"])
        assert r.data.tags["lmforge.tokenized_md5"] == tokenized


def test_an_experiment_on_two_objectives_runs_evaluates_and_registers_only_them(dvc_repo, tmp_path):
    """`dvc exp run -S 'objectives=[clm,mlm]'` (issue 24's acceptance), in a temporary copy made
    from the commit (so the shared workspace stays as it was): the stages of the other objectives
    are not in the graph, those of clm and mlm are up to date (the session's workspace ran them
    with the same inputs, its results committed), and evaluate and register compare and
    register exactly those runs. Registered into a copy of the session's MLflow
    database, so the shared registry is left alone."""
    import shutil

    commit_results(dvc_repo)
    env = env_for(dvc_repo)
    shutil.copy2(dvc_repo / "mlflow.db", tmp_path / "mlflow.db")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "two-objectives",
                           "-S", "objectives=[clm,mlm]"], cwd=dvc_repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    # The results are committed, so clm's and mlm's stages are up to date in the experiment too:
    # only evaluate and register (the stages that read the list) run, over those two.
    assert ran == {"evaluate", "register"}, log[-3000:]
    assert "mlm_nsp" not in log and "rtd" not in log, log[-3000:]
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], cwd=dvc_repo,
                          capture_output=True, text=True, check=True).stdout.split("\n")
    commit = next(line.split()[0] for line in refs if line.endswith("/two-objectives"))

    def at_commit(rel: str) -> dict:
        return json.loads(subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=dvc_repo, capture_output=True,
                                         text=True, check=True).stdout)

    runs = ["clm", "mlm", "scratch-gpt2", "scratch-bert"]
    comparison = at_commit(paths.COMPARISON_JSON)
    assert [r["run"] for r in comparison["runs"]] == runs
    assert all(r["verdict"] for r in comparison["runs"] if r["pretrained"])
    assert "versus_rival" not in comparison["runs"][1]  # rtd's comparison with mlm needs rtd
    assert set(at_commit(paths.COMPARISON_METRICS)) == set(runs)  # (written with sorted keys)
    registry = at_commit(paths.REGISTRY_JSON)
    assert [m["run"] for m in registry["models"]] == runs and [b["run"] for b in registry["bases"]] == ["clm", "mlm"]
    assert (dvc_repo / paths.pretrained_dir("rtd")).is_dir()  # the workspace keeps its four objectives
