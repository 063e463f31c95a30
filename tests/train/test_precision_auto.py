"""`dtype: auto` on CPU: the faster precision by measurement, cached per machine and shape
(components/train/precision.py). The decision is tested on given timings, not wall clocks."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from components.objectives import ARCHITECTURES
from components.train import precision
from components.train.loop import resolve_device_dtype
from components.train.precision import Probe, choose, pick

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def timed(monkeypatch):
    """`measure` returns these per-step seconds instead of timing; counts its calls."""
    state = {"timings": {"float32": [1.0] * 5, "bfloat16": [0.5] * 5}, "calls": 0}

    def fake(step, *args, **kwargs):
        state["calls"] += 1
        return state["timings"]

    monkeypatch.setattr(precision, "measure", fake)
    return state


def _probe(width: int = 8) -> Probe:
    return Probe(step=lambda dtype: None, shape={"model": "M", "batch": {"input_ids": [4, width]}})


@pytest.mark.parametrize("fp32,bf16,expected", [
    ([1.0, 1.1, 0.9], [0.5, 0.6, 0.4], "bfloat16"),  # bf16 2x faster (AMX, EPYC)
    ([1.0, 1.1, 0.9], [1.4, 1.2, 1.3], "float32"),   # bf16 0.77x (AVX512-BF16 without AMX)
    ([1.0, 1.0, 1.0], [0.98, 0.97, 0.99], "float32"),  # a tie within the noise: the exact one
    ([1.0, 1.0, 1.0], [0.5, 0.5, 9.0], "bfloat16"),  # one step slowed by a neighbour does not decide
])
def test_pick_takes_the_faster_precision_by_its_median_step(fp32, bf16, expected):
    choice, speedup = pick({"float32": fp32, "bfloat16": bf16})
    assert choice == expected
    assert speedup == pytest.approx(sorted(fp32)[1] / sorted(bf16)[1])


def test_the_choice_is_cached_per_machine_and_shape_and_reused(cache, timed, capsys):
    assert choose(_probe()) == "bfloat16" and timed["calls"] == 1
    files = list(cache.glob("precision-*.json"))
    record = json.loads(files[0].read_text())
    assert record["key"] == {"cpu": precision.cpu_name(), "torch": torch.__version__,
                             "shape": {"model": "M", "batch": {"input_ids": [4, 8]}}}
    assert record["dtype"] == "bfloat16" and record["bf16_speedup"] == 2.0
    # A later stage (or rerun) on the same machine and shape: read, not measured, even if
    # a measurement now would say otherwise (one choice per machine, not per run's noise).
    timed["timings"] = {"float32": [1.0] * 5, "bfloat16": [2.0] * 5}
    probe = _probe()
    assert choose(probe) == "bfloat16" and timed["calls"] == 1
    assert probe.record["bf16_speedup"] == 2.0 and "cached in" in probe.record["source"]
    assert "auto -> bfloat16 (bf16 step 2.00x" in capsys.readouterr().err
    # Another shape, or another torch version: measured again, in its own file.
    assert choose(_probe(width=16)) == "float32" and timed["calls"] == 2
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch, "__version__", "0.0.0-other")
        choose(_probe())
    assert timed["calls"] == 3 and len(list(cache.glob("precision-*.json"))) == 3


def test_bf16_far_behind_on_this_cpu_settles_fp32_for_every_shape_unmeasured(cache, timed):
    timed["timings"] = {"float32": [1.0] * 5, "bfloat16": [9.0] * 5}  # emulated bf16 (AVX2 only)
    assert choose(_probe()) == "float32" and timed["calls"] == 1
    probe = _probe(width=16)
    assert choose(probe) == "float32" and timed["calls"] == 1  # another shape: not measured
    assert "bf16 measured at 0.11x for M on this CPU" in probe.record["source"]
    timed["timings"] = {"float32": [1.0] * 5, "bfloat16": [1.3] * 5}  # 0.77x: near enough to measure each shape
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch, "__version__", "0.0.0-other")  # another torch: its own records
        choose(_probe())
        choose(_probe(width=16))
    assert timed["calls"] == 3


@pytest.mark.parametrize("content", ["{not json", '{"dtype": "float16", "key": null}', "[]"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(cache, timed, content):
    choose(_probe())
    path = next(cache.glob("precision-*.json"))
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the precision cache"):
        assert choose(_probe()) == "bfloat16"
    assert timed["calls"] == 2 and json.loads(path.read_text())["dtype"] == "bfloat16"


def test_without_a_probe_cpu_auto_is_fp32():
    # Prediction outside training (evaluate, the register gate) has no step to time.
    assert resolve_device_dtype("cpu", "auto") == (torch.device("cpu"), torch.float32)


def test_the_probe_leaves_weights_gradients_and_rng_as_it_found_them(bert_tokenizer):
    from tests.train.test_precision import TINY  # dropout 0.1: the probe's steps draw random numbers

    model = ARCHITECTURES["bert"].build_classifier(TINY, bert_tokenizer, ["a", "b"], None).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"input_ids": torch.randint(5, model.config.vocab_size, (4, 12))}
    probe = precision.training_probe(model, batch, lambda m, b: m(**b).logits.float().sum(), torch.device("cpu"),
                                     lambda dtype: precision.contextlib.nullcontext())
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    timings = precision.measure(probe.step, warmup=1, repeats=2)
    assert {k: len(v) for k, v in timings.items()} == {"float32": 2, "bfloat16": 2}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert probe.shape["model"] == "BertForSequenceClassification" and probe.shape["batch"] == {"input_ids": [4, 12]}


def test_fine_tuning_with_auto_trains_exactly_as_told_its_choice(cache, bert_tokenizer):
    # The probe costs a few steps but changes nothing: an `auto` run equals a run given
    # the dtype it recorded, so a rerun can reproduce it.
    from tests.evaluate.test_evaluation import _cfg, _toy_task
    from tests.train.test_precision import TINY
    from components.train.finetuning import finetune

    spec = ARCHITECTURES["bert"]
    tokenizer = spec.prepare_classifier_tokenizer(copy.deepcopy(bert_tokenizer), 16)
    results = {}
    for dtype in ("auto", None):
        torch.manual_seed(0)
        model = spec.build_classifier(TINY, tokenizer, ["serialise", "filesystem"], None)
        chosen = dtype or results["auto"]["dtype"]
        results[dtype or "told"] = finetune(model, tokenizer, _toy_task(32, 0), _toy_task(16, 1), 2,
                                            _cfg(epochs=2, dtype=chosen), seed=0, head=spec.classifier_head)
    auto, told = results["auto"], results["told"]
    assert auto["dtype"] in ("float32", "bfloat16") and "measured in" in auto["precision_source"]
    assert list(cache.glob("precision-*.json"))
    assert [h["val_macro_f1"] for h in auto["history"]] == [h["val_macro_f1"] for h in told["history"]]


def test_past_its_time_budget_the_probe_stops_after_one_timed_step_each():
    calls = []
    timings = precision.measure(calls.append, warmup=1, repeats=4, max_seconds=0.0)
    assert calls == [torch.float32, torch.bfloat16] * 2
    assert {k: len(v) for k, v in timings.items()} == {"float32": 1, "bfloat16": 1}
