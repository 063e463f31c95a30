"""The objective specs are the one place that knows objectives and architectures by name."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from components.objectives import (ARCHITECTURES, FINETUNE_RUN_NAMES, FINETUNE_RUNS, OBJECTIVE_NAMES, OBJECTIVES,
                                   SCRATCH_RUN_NAMES)

# What the issue calls "an objective or architecture string comparison".
NAME_COMPARISON = re.compile(r'== ?"(clm|mlm|mlm_nsp|gpt2|bert)"|"scratch-"')
CODE_DIRS = ("components", "pipelines", "flows", "cli")
SPEC_MODULE = "components/objectives.py"


def _code_files(repo_root):
    for folder in CODE_DIRS:
        yield from sorted((repo_root / folder).rglob("*.py"))


def test_no_name_comparisons_outside_the_spec_module(repo_root):
    found = [f"{path.relative_to(repo_root)}:{n}: {line.strip()}"
             for path in _code_files(repo_root) if path.relative_to(repo_root).as_posix() != SPEC_MODULE
             for n, line in enumerate(path.read_text().splitlines(), 1) if NAME_COMPARISON.search(line)]
    assert found == []


def test_the_pattern_finds_a_comparison():
    assert NAME_COMPARISON.search('if objective == "clm":')
    assert NAME_COMPARISON.search('pretrained = not run.startswith("scratch-")')
    assert not NAME_COMPARISON.search("if objective.next_sentence:")


def test_library_modules_never_import_the_spec_module(repo_root):
    """components.objectives sits above tokens/, train/, evaluate/ and registry/: they get
    the spec (or callables from it) as arguments, so imports keep flowing one way."""
    importers = []
    for path in sorted((repo_root / "components").rglob("*.py")):
        if path.relative_to(repo_root).as_posix() == SPEC_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.startswith("components.objectives") for name in names):
                importers.append(path.relative_to(repo_root).as_posix())
    assert importers == []


def test_importing_the_specs_imports_neither_torch_nor_transformers(repo_root):
    code = ("import sys, json, components.objectives, flows.graph; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_name_lists_follow_the_specs():
    assert OBJECTIVE_NAMES == ("clm", "mlm", "mlm_nsp", "rtd")
    assert FINETUNE_RUN_NAMES == (*OBJECTIVE_NAMES, *SCRATCH_RUN_NAMES)
    for name, run in FINETUNE_RUNS.items():
        assert run.pretrained == (name in OBJECTIVES)
        assert run.report_objective == (name if run.pretrained else "scratch")
        # A pretrained run's scratch twin has its architecture (and so its shapes).
        assert run.architecture.scratch_run in FINETUNE_RUNS
        assert FINETUNE_RUNS[run.architecture.scratch_run].architecture is run.architecture


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_each_objective_builds_its_model_and_summarises_its_metrics(name, request):
    from components.config import ModelConfig

    spec = OBJECTIVES[name]
    tokenizer = request.getfixturevalue(f"{spec.architecture.name}_tokenizer")
    model = spec.build_model(ModelConfig(n_layers=1, n_heads=2, d_model=32, d_ff=64, max_positions=32), tokenizer)
    saved = spec.saved_model(model)  # what is saved, fine-tuned and registered (rtd: its discriminator)
    assert type(saved).__name__ == spec.model_class and saved.config._attn_implementation == "sdpa"
    metrics = {"val_loss": 3.0, "val_perplexity": 20.1, "val_mlm_accuracy": 0.25, "val_nsp_accuracy": 0.6,
               "val_rtd_accuracy": 0.9, "steps": 8}
    kept, line = spec.pretraining_summary(metrics)
    assert list(kept) == [k for k in spec.report_metrics if k in metrics] and "steps" not in kept
    assert line in ("perplexity 20.1", "MLM acc 0.250", "MLM acc 0.250, NSP acc 0.600",
                    "RTD acc 0.900, generator MLM acc 0.250")
    # Each shown metric's baseline is kept with it (tests/evaluate/test_baselines_shown.py: the lines).
    assert set(spec.baselines) | set(spec.baselines.values()) <= set(spec.report_metrics) and spec.baselines
    assert spec.registry_task in ("text-generation", "fill-mask", "token-classification")


def test_each_architecture_has_its_tokenizer_kind(gpt2_tokenizer, bert_tokenizer):
    tokenizers = {"gpt2": gpt2_tokenizer, "bert": bert_tokenizer}
    for name, spec in ARCHITECTURES.items():
        tok = tokenizers[name]
        assert all(getattr(tok, special) is not None for special in spec.required_specials)
        assert {getattr(tok, k) for k in spec.specials} == set(spec.specials.values())
