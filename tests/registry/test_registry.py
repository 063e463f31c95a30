"""The MLflow registry on a real SQLite store: versions, aliases, the promotion gate, manual
promote / rollback, and what a version carries (model card, lineage, params, no secrets)."""
from __future__ import annotations

import copy

import json
from pathlib import Path

import numpy as np
import pytest

from components.config import RegisterConfig
from components.registry.models import (
    CHALLENGER,
    CHAMPION,
    GATE_HISTORY_TAG,
    HISTORY_TAG,
    RegistryError,
    decide_promotion,
    model_name,
    pip_requirements,
    promote,
    register_classifier,
    register_model,
    rollback,
    weights_digest,
)
from components.train.scores import macro_f1
from registry_models import saved_classifier, toy_evidence, toy_test_predictions, trained_classifier

NAME = "lmforge-mlm"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store in tmp_path; artifacts land there too."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)  # don't leave MLflow's process-wide URI pointing at a deleted store


def _metrics(f1: float) -> dict[str, float]:
    return {"test_macro_f1": f1, "test_accuracy": f1 + 0.05}


def _state(name: str) -> dict:
    """What promote / rollback may change: which version holds which alias."""
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
    return {v: sorted(client.get_model_version(name, v).aliases) for v in versions}


def test_register_lifecycle_challenger_champion_and_no_duplicates(mlflow_store, bert_tokenizer):
    from mlflow import MlflowClient

    cfg = RegisterConfig()
    first, second = (saved_classifier(mlflow_store, s, bert_tokenizer) for s in (1, 2))
    third, third_metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=40)
    assert len({weights_digest(d) for d in (first, second, third)}) == 3

    # The first version has nobody to beat: challenger and champion.
    r1 = register_classifier(NAME, first, _metrics(0.6), {"lmforge.objective": "mlm"}, cfg)
    assert (r1["version"], r1["aliases"], r1["promoted"], r1["new_version"]) == (1, [CHALLENGER, CHAMPION], True, True)
    assert r1["reason"] == "no champion yet"

    # A different model with a lower gate metric: challenger only, and the tag says why.
    r2 = register_classifier(NAME, second, _metrics(0.5), {}, cfg)
    assert (r2["version"], r2["aliases"], r2["promoted"]) == (2, [CHALLENGER], False)

    client = MlflowClient()
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["lmforge.promotion"].startswith("no paired test predictions to compare with champion v1")
    assert v2.tags["lmforge.test_macro_f1"] == "0.500000"
    assert v2.tags["lmforge.weights_sha256"] == weights_digest(second)
    assert int(client.get_model_version_by_alias(NAME, CHAMPION).version) == 1
    assert client.get_model_version(NAME, "1").tags["lmforge.objective"] == "mlm"

    # The same weights again: the existing version comes back, no new one, no new gate decision.
    again = register_classifier(NAME, second, _metrics(0.5), {}, cfg)
    assert (again["version"], again["new_version"], again["promoted"]) == (2, False, False)
    assert "not gated again" in again["reason"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2

    # Clearly better on paired evidence takes the champion alias; the old champion keeps no alias.
    r3 = register_classifier(NAME, third, third_metrics, {}, cfg, evidence=toy_evidence(third, cfg))
    assert (r3["version"], r3["aliases"], r3["promoted"]) == (3, [CHALLENGER, CHAMPION], True)
    assert r3["reason"].startswith("test_macro_f1 vs champion v1: +") and "lower bound above 0.0" in r3["reason"]
    assert client.get_model_version(NAME, "1").aliases == []
    assert client.get_model_version(NAME, "2").aliases == []

    # Re-registering the champion itself keeps it champion.
    same = register_classifier(NAME, third, third_metrics, {}, cfg)
    assert (same["version"], same["reason"], same["new_version"]) == (3, "already champion", False)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3
    # The gate's champion changes are in the history, oldest first.
    events = json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG])
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [("gate", "1", None), ("gate", "3", "1")]
    gates = json.loads(client.get_registered_model(NAME).tags[GATE_HISTORY_TAG])
    assert [(g["version"], g["champion"], g["promoted"]) for g in gates] == [("1", None, True), ("2", "1", False),
                                                                             ("3", "1", True)]


def test_an_under_trained_run_never_becomes_champion(mlflow_store, bert_tokenizer):
    from mlflow import MlflowClient

    trained, trained_metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=40)
    assert trained_metrics["test_macro_f1"] > 0.9  # the toy task is learnable: a real champion
    cfg = RegisterConfig(min_improvement=0.01)
    assert register_classifier(NAME, trained, trained_metrics, {}, cfg)["promoted"]
    for seed, steps in ((1, 0), (2, 1), (3, 2)):  # untrained, one step, two steps: each scored on the same split
        under, under_metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=steps, seed=seed)
        assert under_metrics["test_macro_f1"] < trained_metrics["test_macro_f1"]
        decision = register_classifier(NAME, under, under_metrics, {}, cfg, evidence=toy_evidence(under, cfg))
        assert decision["new_version"] and not decision["promoted"]
        assert decision["aliases"] == [CHALLENGER]
        tags = MlflowClient().get_model_version(NAME, str(decision["version"])).tags
        assert tags["lmforge.promotion"].endswith("lower bound not above 0.01")
        assert float(tags["lmforge.gate_diff"]) == pytest.approx(
            under_metrics["test_macro_f1"] - trained_metrics["test_macro_f1"], abs=1e-6)
    assert str(MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version) == "1"


def test_a_luckier_point_estimate_without_evidence_is_not_promoted(mlflow_store, bert_tokenizer):
    """The champion's weights perturbed and re-registered with one more test example right: a
    higher macro-F1 (today's point-estimate gate promotes it), but a paired CI that straddles 0."""
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    cfg = RegisterConfig()
    champion_dir, champion_metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=5)
    register_classifier(NAME, champion_dir, champion_metrics, {}, cfg)
    _, y, pred = toy_test_predictions(champion_dir)
    assert (pred != y).any()  # it has errors to fix
    model = AutoModelForSequenceClassification.from_pretrained(str(champion_dir))
    with torch.no_grad():
        next(model.parameters()).add_(1e-6)
    lucky_dir = mlflow_store / "lucky"
    model.save_pretrained(lucky_dir)
    bert_tokenizer.__class__.from_pretrained(str(champion_dir)).save_pretrained(lucky_dir)
    lucky = pred.copy()
    lucky[int(np.flatnonzero(pred != y)[0])] = y[np.flatnonzero(pred != y)[0]]
    lucky_f1 = macro_f1(y, lucky, 2)
    assert lucky_f1 > champion_metrics["test_macro_f1"]
    decision = register_classifier(NAME, lucky_dir, {"test_macro_f1": lucky_f1}, {}, cfg,
                                   evidence=toy_evidence(lucky_dir, cfg, pred=lucky))
    assert decision["new_version"] and not decision["promoted"]
    tags = MlflowClient().get_model_version(NAME, str(decision["version"])).tags
    assert float(tags["lmforge.gate_ci_low"]) <= 0.0 < float(tags["lmforge.gate_diff"]) <= float(tags["lmforge.gate_ci_high"])
    assert tags["lmforge.gate_champion"] == "1" and tags["lmforge.promotion"].endswith("lower bound not above 0.0")

    # Clearly better on the same split: promoted, the CI on its tags.
    better_dir, better_metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=40)
    decision = register_classifier(NAME, better_dir, better_metrics, {}, cfg, evidence=toy_evidence(better_dir, cfg))
    assert decision["promoted"] and decision["aliases"] == [CHALLENGER, CHAMPION]
    tags = MlflowClient().get_model_version(NAME, str(decision["version"])).tags
    assert 0.0 < float(tags["lmforge.gate_ci_low"]) <= float(tags["lmforge.gate_ci_high"])
    # A champion that cannot be scored on this split (other labels): nothing is promoted.
    other = register_classifier(NAME, saved_classifier(mlflow_store, 9, bert_tokenizer), better_metrics, {}, cfg,
                                evidence=lambda champion: None)
    assert not other["promoted"] and other["reason"].startswith("not comparable: champion v3")


def test_rescoring_a_registered_classifier_reproduces_its_metric(mlflow_store, bert_tokenizer):
    from mlflow import MlflowClient

    from components.registry.register import rescore_classifier
    from registry_models import LABELS, toy_task

    model_dir, metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=20)
    register_classifier(NAME, model_dir, metrics, {}, RegisterConfig())
    texts, y = toy_task(128, seed=2)  # the split trained_classifier scored it on
    champion = MlflowClient().get_model_version_by_alias(NAME, CHAMPION)
    assert rescore_classifier(champion, texts, y, LABELS, "test_macro_f1") == pytest.approx(metrics["test_macro_f1"])
    assert rescore_classifier(champion, texts, y, ["a", "b"], "test_macro_f1") is None  # other labels: not comparable


def test_promote_and_rollback_twice_leave_the_same_state_and_are_recorded(mlflow_store, bert_tokenizer):
    from mlflow import MlflowClient

    cfg = RegisterConfig()
    for seed, f1 in ((1, 0.6), (2, 0.5)):
        register_classifier(NAME, saved_classifier(mlflow_store, seed, bert_tokenizer), _metrics(f1), {}, cfg)
    before = _state(NAME)
    assert before == {"1": [CHAMPION], "2": [CHALLENGER]}

    states = []
    for _ in range(2):
        assert promote(NAME, 2, reason="canary looks good", by="alice")["changed"]
        assert promote(NAME, 2, by="alice")["changed"] is False  # idempotent
        assert _state(NAME) == {"1": [], "2": [CHALLENGER, CHAMPION]}
        assert rollback(NAME, reason="latency regression", by="bob")["changed"]
        assert rollback(NAME, by="bob")["changed"] is False  # idempotent: the last change is already undone
        states.append(_state(NAME))
    assert states == [before, before]

    client = MlflowClient()
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["lmforge.promoted_by"] == "alice" and v2.tags["lmforge.promotion"] == "manual: canary looks good"
    assert v2.tags["lmforge.rolled_back"].startswith("by bob at ") and "latency regression" in v2.tags["lmforge.rolled_back"]
    assert "restored by rollback from v2" in client.get_model_version(NAME, "1").tags["lmforge.promotion"]
    events = json.loads(client.get_registered_model(NAME).tags[HISTORY_TAG])
    assert [(e["action"], e["version"], e["previous"], e["by"]) for e in events] == [
        ("gate", "1", None, "register"),
        ("promote", "2", "1", "alice"), ("rollback", "1", "2", "bob"),
        ("promote", "2", "1", "alice"), ("rollback", "1", "2", "bob"),
    ]
    # Every manual call, no-ops included, is an MLflow run in the audit experiment.
    audit = client.get_experiment_by_name("lmforge-registry")
    runs = client.search_runs([audit.experiment_id], max_results=50)
    assert sorted(r.data.tags["lmforge.action"] for r in runs) == ["promote"] * 4 + ["rollback"] * 4
    assert {r.data.tags["lmforge.model"] for r in runs} == {NAME}


def test_promote_and_rollback_errors_name_the_model_and_the_fix(mlflow_store, bert_tokenizer):
    register_classifier(NAME, saved_classifier(mlflow_store, 1, bert_tokenizer), _metrics(0.6), {}, RegisterConfig())
    with pytest.raises(RegistryError, match=r"lmforge-mlm v7: no such version; known versions: 1"):
        promote(NAME, 7)
    with pytest.raises(RegistryError, match=r"nope: no such registered model"):
        promote("nope", 1)
    with pytest.raises(RegistryError, match=r"lmforge-mlm v1: there was no champion before it.*lmforge promote"):
        rollback(NAME)
    with pytest.raises(RegistryError, match=r"nope: no such registered model"):
        rollback("nope")


def test_a_version_carries_card_lineage_params_and_pinned_requirements_but_no_secrets(
        mlflow_store, bert_tokenizer, monkeypatch):
    import mlflow
    import yaml
    from mlflow import MlflowClient

    secret = "sup3r-s3cret-value-42"
    monkeypatch.setenv("LMFORGE_TEST_API_TOKEN", secret)
    params = mlflow_store / "params.yaml"
    params.write_text(f"data:\n  source: s3://AKIAEXAMPLE:{secret}@bucket/corpus.jsonl\n")
    lineage = {"objective": "mlm", "git_commit": "abc123", "corpus_md5": "c0ffee.dir",
               "data_source": f"s3://AKIAEXAMPLE:{secret}@bucket/corpus.jsonl"}
    model_dir = saved_classifier(mlflow_store, 5, bert_tokenizer)
    decision = register_model(NAME, model_dir, "text-classification", _metrics(0.7), lineage, RegisterConfig(),
                              files={"params.yaml": params}, card=f"# card\nmacro-F1 0.7000, source {lineage['data_source']}\n")

    version = MlflowClient().get_model_version(NAME, str(decision["version"]))
    assert version.tags["lmforge.corpus_md5"] == "c0ffee.dir" and version.tags["lmforge.task"] == "text-classification"
    # The MLflow UI shows the description on the version's page: the model card, after a summary line.
    assert version.description.startswith("text-classification from ") and "# card\nmacro-F1 0.7000" in version.description
    assert secret not in version.description
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@{CHAMPION}"))
    card = (local / "README.md").read_text()
    assert "macro-F1 0.7000" in card
    assert json.loads((local / "lineage.json").read_text())["lmforge.git_commit"] == "abc123"
    assert "bucket/corpus.jsonl" in (local / "params.yaml").read_text()
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["transformers"]["task"] == "text-classification"
    assert any(p.suffix == ".safetensors" for p in local.rglob("*"))
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == pip_requirements() and all("==" in r for r in requirements)
    every_text = "".join(p.read_text(errors="ignore") for p in local.rglob("*") if p.is_file() and p.stat().st_size < 1e6)
    assert secret not in every_text and secret not in json.dumps(version.tags)


@pytest.mark.parametrize("challenger, champion, min_improvement, promoted", [
    (0.5, None, 0.0, True),      # no champion yet
    (0.0, None, 0.5, True),      # even a zero score starts the registry
    (0.71, 0.70, 0.0, True),
    (0.70, 0.70, 0.0, False),    # a tie does not promote
    (0.69, 0.70, 0.0, False),
    (0.705, 0.70, 0.01, False),  # better, but not by more than min_improvement
    (0.70 + 0.01, 0.70, 0.01, False),  # exactly min_improvement is not "more than"
    (0.72, 0.70, 0.01, True),
])
def test_decide_promotion(challenger, champion, min_improvement, promoted):
    decision, reason = decide_promotion(challenger, champion, min_improvement)
    assert decision is promoted
    if champion is None:
        assert reason == "no champion yet"
    else:
        assert f"{champion:.4f}" in reason and ("does not beat" in reason) != promoted


@pytest.mark.parametrize("field, value", [
    ("model_prefix", ""),
    ("model_prefix", "bad name"),
    ("model_prefix", "a/b"),
    ("gate_metric", "val_loss"),
    ("min_improvement", -0.1),
])
def test_register_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"register\.{field}"):
        RegisterConfig(**{field: value})


def test_model_name_uses_the_prefix():
    assert model_name(RegisterConfig(model_prefix="acme.lm"), "mlm_nsp") == "acme.lm-mlm_nsp"


def test_a_registered_classifier_answers_any_length_as_evaluation_did(mlflow_store, bert_tokenizer):
    """pyfunc (what `mlflow models serve` runs), the transformers flavor (`lmforge predict`) and a
    plain `transformers.pipeline(..., truncation=True)` on the logged files truncate to the trained
    length, so texts far past the model's positions get the labels evaluation gives them."""
    bert_tokenizer = copy.deepcopy(bert_tokenizer)  # registering truncates it: keep the shared one intact
    import mlflow
    import torch
    import transformers
    from mlflow import MlflowClient
    from transformers import AutoModelForSequenceClassification

    from components.registry.models import load_version
    from registry_models import LABELS, TINY, _encode, toy_task

    model_dir, metrics = trained_classifier(mlflow_store, bert_tokenizer, steps=40)
    register_classifier(NAME, model_dir, metrics, {}, RegisterConfig())
    short, _ = toy_task(4, seed=3)
    texts = [" ".join([short[0]] * 60), " ".join([short[1]] * 30), *short]
    assert len(bert_tokenizer(texts[0])["input_ids"]) > 4 * TINY.max_positions
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        expected = [LABELS[i] for i in model(**_encode(bert_tokenizer, texts)).logits.argmax(-1).tolist()]

    assert list(mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(texts)["label"]) == expected
    version = MlflowClient().get_model_version_by_alias(NAME, CHAMPION)
    assert [p["label"] for p in load_version(version)(texts)] == expected
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    plain = transformers.pipeline("text-classification", model=str(local / "model"),
                                  tokenizer=str(local / "components" / "tokenizer"), truncation=True)
    assert [p["label"] for p in plain(texts)] == expected
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert info.signature is not None and info.saved_input_example_info is not None
