"""The champion in use and traced back: it loads in a fresh process with the transformers flavor
and pyfunc, `mlflow models serve` answers a REST request with labels, and `git checkout
<commit> && dvc checkout` restores the exact corpus its lineage names."""
from __future__ import annotations

import copy
import json
import re
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from components import paths
from components.objectives import FINETUNE_RUN_NAMES, OBJECTIVE_NAMES
from pipeline_repo import commit_results, env_for, free_port, stop_group, wait_until_up
from registry_models import LABELS, trained_classifier

pytestmark = pytest.mark.slow
NAME = "toy-served"
TEXTS = ["json encode decode object string dump", "path file directory join name folder",
         "glob parent suffix home root path"]


@pytest.fixture(scope="module")
def served_store(tmp_path_factory, bert_tokenizer, one_thread):
    """A store whose champion is a trained toy classifier; (root, env for subprocesses, expected labels)."""
    import mlflow

    from components.config import RegisterConfig
    from components.registry.models import register_classifier

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        model_dir, metrics = trained_classifier(root, bert_tokenizer, steps=40)
        register_classifier(NAME, model_dir, metrics, {}, RegisterConfig())
    mlflow.set_tracking_uri(None)
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        logits = model(**copy.deepcopy(bert_tokenizer)(TEXTS, padding=True, return_tensors="pt")).logits
    expected = [LABELS[i] for i in logits.argmax(-1).tolist()]
    assert set(expected) == set(LABELS)  # a trained model: both labels appear, so labels are really checked
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return root, env, expected


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_champion_loads_in_a_fresh_process_and_mlflow_serve_answers_with_labels(served_store):
    root, env, expected = served_store
    port = free_port()
    # The server starts first; the fresh-process load runs while it boots (two cores, ~20 s each).
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = (
            "import json, sys, mlflow\n"
            f"uri = 'models:/{NAME}@champion'\n"
            "texts = json.loads(sys.argv[1])\n"
            "pipe = mlflow.transformers.load_model(uri)\n"
            "pyfunc = mlflow.pyfunc.load_model(uri)\n"
            "print(json.dumps({'transformers': [p['label'] for p in pipe(texts)],\n"
            "                  'pyfunc': list(pyfunc.predict(texts)['label'])}))\n"
        )
        loaded = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], cwd=root, env=env,
                                capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {"transformers": expected, "pyfunc": expected}

        wait_until_up(f"http://127.0.0.1:{port}/ping", server, "mlflow models serve",
                      lambda: server.stdout.read().decode()[-3000:])
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": TEXTS})
        assert [p["label"] for p in answer["predictions"]] == expected
        assert all(0.5 <= p["score"] <= 1.0 for p in answer["predictions"])
    finally:
        stop_group(server)  # the server and its uvicorn worker, nothing else


def _dir_manifest(repo: Path, md5: str) -> dict[str, str]:
    """relpath -> md5 of every file in a DVC directory hash, from the repository's cache."""
    digest = md5.removesuffix(".dir")
    manifest = repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir"
    return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}


def _files_md5(directory: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(directory).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_lineage_commit_and_dvc_checkout_restore_the_exact_corpus(dvc_repo, tmp_path):
    """On a copy of the session's pipeline repo (the shared one is left as it was)."""
    repo = tmp_path / "repo"
    shutil.copytree(dvc_repo, repo, symlinks=True)
    env = env_for(repo)
    # A store of its own: the copied mlflow.db would write artifacts into the shared repo's folder.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'lineage.db'}"

    def run(*cmd: str) -> str:
        proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    # Commit the lock with the code, as one does after `dvc repro`, then register at that commit.
    commit_results(repo)
    run(sys.executable, "-m", "pipelines.register")
    chain = json.loads(run(sys.executable, "-m", "cli.main", "lineage", "lmforge-mlm@champion", "--json"))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    corpus_md5 = next(o["md5"] for o in lock["ingest"]["outs"] if o["path"] == paths.CORPUS_DIR)
    assert chain["git"] == {"commit": run("git", "rev-parse", "HEAD").strip(), "dirty": False, "dvc_lock_committed": True}
    assert chain["corpus"]["md5"] == corpus_md5
    assert chain["tokenizer"]["md5"] == lock["train_tokenizer@bert"]["outs"][0]["md5"]
    assert chain["tokenized"]["md5"] == lock["tokenize@mlm"]["outs"][0]["md5"]
    assert chain["restore"] == f"git checkout {chain['git']['commit']} && dvc checkout"
    text = run(sys.executable, "-m", "cli.main", "lineage", "lmforge-mlm@champion")
    assert "note" not in text and corpus_md5 in text

    # The stage again with nothing changed: no new version, no new decision.
    first = json.loads((repo / paths.REGISTRY_JSON).read_text())
    run(sys.executable, "-m", "pipelines.register")
    again = json.loads((repo / paths.REGISTRY_JSON).read_text())
    assert len(first["models"]) + len(first["bases"]) == len(FINETUNE_RUN_NAMES) + len(OBJECTIVE_NAMES)
    assert all(m["new_version"] for m in first["models"])
    assert [(m["name"], m["version"], m["new_version"]) for m in again["models"] + again["bases"]] == \
        [(m["name"], m["version"], False) for m in first["models"] + first["bases"]]

    # The corpus moves on: a smaller corpus, committed.
    params = repo / "params.yaml"
    # `dvc exp run -S` (run on the shared repo by test_pipeline.py) rewrites null as empty.
    params.write_text(re.sub(r"max_documents:[ \t]*(null)?", "max_documents: 60 ", params.read_text(), count=1))
    run(sys.executable, "-m", "dvc", "repro", "--single-item", "ingest")
    run("git", "commit", "-qam", "smaller corpus")
    assert _files_md5(repo / paths.CORPUS_DIR) != _dir_manifest(repo, corpus_md5)

    # The lineage's own commands bring the model's corpus back, file for file.
    run("git", "checkout", "-q", chain["git"]["commit"])
    run(sys.executable, "-m", "dvc", "checkout")
    assert _files_md5(repo / paths.CORPUS_DIR) == _dir_manifest(repo, corpus_md5)


def test_pipeline_versions_name_the_runs_that_made_their_weights(dvc_repo):
    """Read-only, on the session's pipeline: every classifier and base version links to the
    fine-tuning and pretraining runs whose weights hash it carries; one task per kind."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dvc_repo / 'mlflow.db'}")
    registry = json.loads((dvc_repo / paths.REGISTRY_JSON).read_text())
    assert [m["run"] for m in registry["models"]] == list(FINETUNE_RUN_NAMES)
    assert {b["name"]: b["task"] for b in registry["bases"]} == {
        "lmforge-clm-base": "text-generation", "lmforge-mlm-base": "fill-mask", "lmforge-mlm_nsp-base": "fill-mask",
        "lmforge-rtd-base": "token-classification"}
    for entry in registry["models"] + registry["bases"]:
        tags = client.get_model_version(entry["name"], str(entry["version"])).tags
        if entry in registry["bases"]:
            made_by, match = client.get_run(tags["lmforge.pretrain_run_id"]), tags["lmforge.pretrain_run_match"]
            assert tags["lmforge.gate_source"].startswith(f"{entry['name'].removesuffix('-base')} v")
        else:
            made_by, match = client.get_run(tags["lmforge.finetune_run_id"]), tags["lmforge.finetune_run_match"]
        assert match == "weights" and made_by.data.tags["lmforge.weights_sha256"] == tags["lmforge.weights_sha256"]
        assert made_by.data.tags["lmforge.objective"] == entry["run"]
        assert tags["lmforge.validation_success"] == "true" and tags["lmforge.corpus_md5"].endswith(".dir")


def test_the_registered_rtd_detector_predicts_a_replaced_probability_per_token(dvc_repo):
    """Read-only: `lmforge predict` on the rtd base (ELECTRA's discriminator, task
    token-classification) gives every word piece of the text a probability of being replaced."""
    version = next(b for b in json.loads((dvc_repo / paths.REGISTRY_JSON).read_text())["bases"]
                   if b["name"] == "lmforge-rtd-base")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--repo", str(dvc_repo), "predict",
                           f"{version['name']}/{version['version']}", "Return a new list of the items.", "--json"],
                          cwd=dvc_repo, env=env_for(dvc_repo), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["task"] == "token-classification"
    tokens = out["predictions"][0]["tokens"]
    assert [t["token"] for t in tokens][:2] == ["return", "a"] and len(tokens) >= 7  # lowercased word pieces, no specials
    assert all(0.0 <= t["replaced"] <= 1.0 for t in tokens)


def test_the_served_pipeline_champion_answers_every_test_text_as_evaluate_did(dvc_repo):
    """Read-only, on the session's pipeline: `mlflow models serve` on the GPT-2 classifier
    champion answers the whole test split, its longest docstrings (far past the trained
    length) included, with the labels the evaluate stage predicted."""
    from components.train.finetuning import read_labelled

    report = json.loads((dvc_repo / paths.COMPARISON_JSON).read_text())
    evaluated = next(r for r in report["runs"] if r["run"] == "clm")
    version = next(m for m in json.loads((dvc_repo / paths.REGISTRY_JSON).read_text())["models"] if m["run"] == "clm")
    # The version registered from the weights evaluate scored (other tests on the shared
    # pipeline may have moved the champion alias since: serve by version, not alias).
    texts = read_labelled(dvc_repo / paths.DOWNSTREAM_DIR / "test.parquet", report["labels"])["text"].tolist()
    longest = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[:24]
    from transformers import AutoConfig, AutoTokenizer

    model_dir = dvc_repo / paths.primary_model_dir("clm", root=dvc_repo)
    tokenizer, positions = AutoTokenizer.from_pretrained(str(model_dir)), AutoConfig.from_pretrained(str(model_dir)).n_positions
    lengths = [len(tokenizer(texts[i])["input_ids"]) for i in longest]
    assert max(lengths) > positions  # past the model's positions: untruncated, this raised IndexError
    env = env_for(dvc_repo)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{version['name']}/{version['version']}",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=dvc_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, "mlflow models serve",
                      lambda: server.stdout.read().decode()[-3000:])
        served = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": [texts[i] for i in longest]})
        assert len(served["predictions"]) == 24
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": texts})
    finally:
        stop_group(server)
    labels = [p["label"] for p in answer["predictions"]]
    expected = [report["labels"][i] for i in evaluated["test_predictions"]]
    print(f"served {len(labels)} test texts (24 longest: {min(lengths)}-{max(lengths)} tokens, trained at "
          f"{tokenizer.model_max_length}, {positions} positions); "
          f"agreement with evaluate {sum(a == b for a, b in zip(labels, expected))}/{len(expected)}")
    assert [p["label"] for p in served["predictions"]] == [expected[i] for i in longest]
    assert labels == expected
