"""`lmforge predict | promote | rollback | lineage` on a SQLite store of tiny registered models."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from cli.main import main
from cli.registry_cmds import parse_model_ref
from components.config import RegisterConfig
from components.registry.models import RegistryError, check_no_remote_code, register_model
from registry_models import LABELS, saved_classifier, saved_pretrained

LINEAGE = {"objective": "mlm", "git_commit": "0123abcd", "git_dirty": "false", "dvc_lock_committed": "true",
           "params_sha256": "feedbeef", "corpus_md5": "c0ffee.dir", "tokenizer_md5": "70ce.dir",
           "tokenized_md5": "70ced.dir", "validation_success": "true", "test_split_sha256": "5p117",
           "finetune_run_id": "ft-run", "finetune_run_match": "weights",
           "pretrain_run_id": "pt-run", "pretrain_run_match": "weights",
           "requirements_lock_sha256": "10c4" * 16, "torch_version": "2.13.0+cpu",
           "transformers_version": "5.24.0", "tokenizers_version": "0.23.0"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, bert_tokenizer, gpt2_tokenizer, one_thread):
    """One store for the module: a classifier, a text-generation base and a fill-mask base
    (BertForPreTraining, registered as BertForMaskedLM like the mlm_nsp base)."""
    import mlflow

    root = tmp_path_factory.mktemp("registry-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        cfg = RegisterConfig()
        metrics = {"test_macro_f1": 0.5, "test_accuracy": 0.6}
        clf = saved_classifier(root, 7, bert_tokenizer)
        register_model("toy-clf", clf, "text-classification", metrics, LINEAGE, cfg)
        register_model("toy-gen", saved_pretrained(root, "clm", gpt2_tokenizer), "text-generation", metrics, {}, cfg)
        register_model("toy-fill", saved_pretrained(root, "mlm_nsp", bert_tokenizer), "fill-mask", metrics, {}, cfg)
        yield {"root": root, "classifier_dir": clf, "mp": mp}
    mlflow.set_tracking_uri(None)


def run_cli(store, capsys, *args) -> tuple[int, str, str]:
    rc = main(["--repo", str(store["root"]), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_classifies_with_label_names(store, capsys, bert_tokenizer):
    from transformers import AutoModelForSequenceClassification

    texts = ["the json module encodes objects", "a path joins names"]
    rc, out, _ = run_cli(store, capsys, "predict", "toy-clf@champion", *texts, "--json")
    assert rc == 0
    result = json.loads(out)
    assert (result["model"], result["version"], result["task"]) == ("toy-clf", 1, "text-classification")
    model = AutoModelForSequenceClassification.from_pretrained(str(store["classifier_dir"])).eval()
    with torch.no_grad():
        logits = model(**copy.deepcopy(bert_tokenizer)(texts, padding=True, return_tensors="pt")).logits
    assert [p["label"] for p in result["predictions"]] == [LABELS[i] for i in logits.argmax(-1).tolist()]
    rc, out, _ = run_cli(store, capsys, "predict", "toy-clf", texts[0])  # a bare name means its champion
    assert rc == 0 and out.split("\t")[0] in LABELS


def test_predict_generates_and_fills_masks_according_to_the_task(store, capsys):
    rc, out, _ = run_cli(store, capsys, "predict", "toy-gen/1", "Return the number of", "--max-new-tokens", "5", "--json")
    assert rc == 0
    generated = json.loads(out)["predictions"][0]["generated"]
    assert json.loads(out)["task"] == "text-generation" and generated.startswith("Return the number of")
    assert len(generated) > len("Return the number of")
    rc, out, _ = run_cli(store, capsys, "predict", "toy-fill@champion", "Return a new [MASK] of items.",
                         "--top-k", "3", "--json")
    assert rc == 0
    fills = json.loads(out)["predictions"][0]["fills"]
    assert json.loads(out)["task"] == "fill-mask" and len(fills) == 3
    assert all("[MASK]" not in f["sequence"] for f in fills)


@pytest.mark.parametrize("args, message", [
    (["predict", "nope@champion", "x"], "error: nope: no such registered model"),
    (["predict", "toy-clf@best", "x"], "error: toy-clf: no alias @best; `lmforge promote toy-clf <version>`"),
    (["predict", "toy-clf/abc", "x"], "error: toy-clf/abc: expected <model>/<version number>"),
    (["predict", "toy-fill@champion", "no mask here"], "error: fill-mask: 'no mask here' has no [MASK]"),
    (["promote", "toy-clf", "9"], "error: toy-clf v9: no such version; known versions: 1"),
    (["rollback", "toy-gen"], "error: toy-gen v1: there was no champion before it to roll back to; use `lmforge promote"),
    (["lineage", "toy-clf/4"], "error: toy-clf v4: no such version; known versions: 1"),
])
def test_errors_are_one_line_naming_the_model_and_the_fix(store, capsys, args, message):
    rc, out, err = run_cli(store, capsys, *args)
    assert rc == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_promote_and_rollback_from_the_command_line(store, capsys, bert_tokenizer):
    register_model("toy-clf", saved_classifier(store["root"], 8, bert_tokenizer), "text-classification",
                   {"test_macro_f1": 0.4, "test_accuracy": 0.5}, {}, RegisterConfig())
    assert run_cli(store, capsys, "promote", "toy-clf", "2", "--reason", "A/B test")[1] == \
        "toy-clf v2 is champion (was v1)\n"
    assert run_cli(store, capsys, "promote", "toy-clf", "2")[1] == "toy-clf v2 is already champion; nothing changed\n"
    assert run_cli(store, capsys, "rollback", "toy-clf")[1] == "toy-clf v1 is champion again (rolled back from v2)\n"
    assert run_cli(store, capsys, "rollback", "toy-clf")[1] == \
        "toy-clf: already rolled back to v1 (from v2); nothing changed\n"


def test_lineage_prints_the_chain_from_version_to_commit(store, capsys):
    rc, out, _ = run_cli(store, capsys, "lineage", "toy-clf@champion")
    assert rc == 0
    rows = [line.split()[0] for line in out.splitlines()[1:]]
    assert rows == ["promotion", "run", "finetune", "pretrain", "metrics", "params", "tokenizer", "tokenized",
                    "corpus", "validation", "test", "environment", "git", "restore"]
    assert "git checkout 0123abcd && dvc checkout" in out and "c0ffee.dir" in out
    chain = json.loads(run_cli(store, capsys, "lineage", "toy-clf/1", "--json")[1])
    assert chain["corpus"]["md5"] == "c0ffee.dir" and chain["git"] == {
        "commit": "0123abcd", "dirty": False, "dvc_lock_committed": True}
    assert chain["pretrain_run"]["id"] == "pt-run" and chain["metrics"]["test_macro_f1"] == 0.5
    assert chain["run"] == {"id": None, "name": None, "stage": None}  # logged outside a stage run here
    assert chain["environment"] == {"requirements_lock_sha256": "10c4" * 16, "torch": "2.13.0+cpu",
                                    "transformers": "5.24.0", "tokenizers": "0.23.0"}
    assert "torch 2.13.0+cpu, transformers 5.24.0, tokenizers 0.23.0 (requirements.lock sha256 10c410c410c410c4)" in out


def test_models_that_need_custom_code_are_refused(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors:\n  transformers:\n    instance_type: EvilPipeline\n")
    with pytest.raises(RegistryError, match="not a transformers class; refusing custom code"):
        check_no_remote_code(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors:\n  transformers:\n    model_type: BertForMaskedLM\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(RegistryError, match="auto_map"):
        check_no_remote_code(tmp_path)


@pytest.mark.parametrize("ref, parsed", [
    ("lmforge-mlm@champion", ("lmforge-mlm", "champion", None)),
    ("models:/lmforge-mlm@challenger", ("lmforge-mlm", "challenger", None)),
    ("lmforge-mlm/3", ("lmforge-mlm", None, "3")),
    ("models:/acme.lm-clm-base/12", ("acme.lm-clm-base", None, "12")),
    ("lmforge-mlm", ("lmforge-mlm", "champion", None)),
])
def test_parse_model_ref(ref, parsed):
    assert parse_model_ref(ref) == parsed
