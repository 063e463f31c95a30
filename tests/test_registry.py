"""The MLflow registry on a real SQLite store: versions, aliases and the promotion gate."""
from __future__ import annotations

import pytest
import torch

from components.modeling import ModelConfig, build_classifier
from components.registry import (
    CHALLENGER,
    CHAMPION,
    RegisterConfig,
    decide_promotion,
    model_name,
    register_classifier,
    weights_digest,
)

LABELS = ["negative", "positive"]
TINY = ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32)
NAME = "lmforge-mlm"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store in tmp_path; artifacts land there too."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)  # don't leave MLflow's process-wide URI pointing at a deleted store


def _saved_classifier(root, seed: int, tokenizer):
    """A tiny scratch BERT classifier saved the way the finetune stage saves one."""
    torch.manual_seed(seed)
    model = build_classifier("bert", TINY, tokenizer, LABELS, None)
    out = root / f"classifier-{seed}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _metrics(f1: float) -> dict[str, float]:
    return {"test_macro_f1": f1, "test_accuracy": f1 + 0.05}


def test_register_lifecycle_challenger_champion_and_no_duplicates(mlflow_store, bert_tokenizer):
    from mlflow import MlflowClient

    cfg = RegisterConfig()
    first, second, third = (_saved_classifier(mlflow_store, s, bert_tokenizer) for s in (1, 2, 3))
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
    assert v2.tags["lmforge.promotion"] == "0.5000 does not beat champion 0.6000 by more than 0.0"
    assert v2.tags["lmforge.test_macro_f1"] == "0.500000"
    assert v2.tags["lmforge.weights_sha256"] == weights_digest(second)
    assert int(client.get_model_version_by_alias(NAME, CHAMPION).version) == 1
    assert client.get_model_version(NAME, "1").tags["lmforge.objective"] == "mlm"

    # The same weights again: the existing version comes back, no new one is created.
    again = register_classifier(NAME, second, _metrics(0.5), {}, cfg)
    assert (again["version"], again["new_version"], again["promoted"]) == (2, False, False)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2

    # A higher gate metric takes the champion alias; the old champion keeps no alias.
    r3 = register_classifier(NAME, third, _metrics(0.8), {}, cfg)
    assert (r3["version"], r3["aliases"], r3["promoted"]) == (3, [CHALLENGER, CHAMPION], True)
    assert r3["reason"] == "0.8000 beats champion 0.6000 by more than 0.0"
    assert client.get_model_version(NAME, "1").aliases == []
    assert client.get_model_version(NAME, "2").aliases == []

    # Re-registering the champion itself keeps it champion.
    same = register_classifier(NAME, third, _metrics(0.8), {}, cfg)
    assert (same["version"], same["reason"], same["new_version"]) == (3, "already champion", False)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3
    assert (mlflow_store / "mlflow.db").exists()


def test_champion_loads_as_a_pipeline_with_label_names(mlflow_store, bert_tokenizer):
    import mlflow
    from transformers import AutoModelForSequenceClassification

    model_dir = _saved_classifier(mlflow_store, 4, bert_tokenizer)
    register_classifier(NAME, model_dir, _metrics(0.7), {}, RegisterConfig())

    pipe = mlflow.transformers.load_model(f"models:/{NAME}@{CHAMPION}")
    texts = ["the json module encodes objects", "a path joins names", "functools wraps functions"]
    predictions = pipe(texts)

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        logits = model(**bert_tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert [p["label"] for p in predictions] == [LABELS[i] for i in logits.argmax(-1).tolist()]
    assert all(0.5 <= p["score"] <= 1.0 for p in predictions)


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
