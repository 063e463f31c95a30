"""The model card (README.md next to every registered model): data, objective, metrics,
lineage, intended use and limitations, in the Hugging Face card layout."""
from __future__ import annotations

from typing import Any, Mapping

import yaml

USES = {
    "text-classification": "Classify a Python-library docstring by the Library Reference chapter of its module "
                           "(the built-in task), or the downstream task configured in `downstream`.",
    "text-generation": "Continue English technical prose; the base to fine-tune a GPT-2 classifier from.",
    "fill-mask": "Fill `[MASK]` tokens in English technical prose; the base to fine-tune a BERT classifier from.",
    "token-classification": "Label each token of English technical prose original or replaced (ELECTRA's "
                            "discriminator); the base to fine-tune a BERT classifier from.",
}


def _table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in rows.items()]
    return "\n".join(lines)


def _front_matter(name: str, task: str, metrics: dict[str, float], lineage: dict[str, str]) -> str:
    """The card's YAML header: library, pipeline tag and a model-index entry with the metrics."""
    index = [{"name": name, "results": [{
        "task": {"type": task},
        "dataset": {"name": "lmforge downstream test split", "type": "lmforge-downstream",
                    "revision": lineage.get("test_split_sha256", "unknown")},
        "metrics": [{"type": k, "value": round(float(v), 6)} for k, v in metrics.items()]}]}]
    return yaml.safe_dump({"library_name": "transformers", "pipeline_tag": task, "tags": ["lmforge"],
                           "model-index": index}, sort_keys=False)


def metric_rows(metrics: dict[str, float], baselines: Mapping[str, str]) -> str:
    """The evaluation table's rows: each metric with its trivial baseline beside it
    (`baselines`: metric -> the baseline's metric), a baseline on no row of its own."""
    paired = {m: b for m, b in baselines.items() if m in metrics and b in metrics}

    def baseline(k: str) -> str:
        return f"{metrics[paired[k]]:.4f} (`{paired[k]}`)" if k in paired else ""

    return "\n".join(f"| {k} | {v:.4f} | {baseline(k)} |" for k, v in metrics.items() if k not in paired.values())


def render_model_card(name: str, task: str, objective: str, metrics: dict[str, float], lineage: dict[str, str],
                      labels: list[str] | None = None, parameters: int | None = None, gate: str = "",
                      baselines: Mapping[str, str] | None = None) -> str:
    """Markdown with YAML front matter (library, pipeline tag, metrics) a hub or a person can read;
    `objective` describes the pretraining (its spec's description); `baselines` maps a metric
    to the metric of its trivial baseline, shown beside it."""
    front = _front_matter(name, task, metrics, lineage)
    label_line = f"Labels ({len(labels)}): {', '.join(f'`{x}`' for x in labels)}.\n" if labels else ""
    size = f" ({parameters:,} parameters)" if parameters else ""
    rows = metric_rows(metrics, baselines or {})
    return f"---\n{front}---" + f"""

# {name}

A `{task}` model{size} trained by lmforge. Pretraining objective: {objective}.
{label_line}
## Training data

- Corpus: `{lineage.get('data_source', 'unknown')}`, DVC hash `{lineage.get('corpus_md5', 'unknown')}`.
- Corpus gate (Great Expectations): success `{lineage.get('validation_success', 'unknown')}`
  ({lineage.get('validation_successful_expectations', '?')} of {lineage.get('validation_evaluated_expectations', '?')} expectations).
- Tokenizer `{lineage.get('tokenizer_md5', 'unknown')}`, tokenized data `{lineage.get('tokenized_md5', 'n/a')}`.
- Downstream task data `{lineage.get('downstream_md5', 'unknown')}`; the metrics below are on its held-out
  test split (sha256 prefix `{lineage.get('test_split_sha256', 'unknown')}`), split by module so no
  module's text is in two splits.

## Evaluation

| metric | value | trivial baseline (same data) |
|---|---|---|
{rows}

{gate}

## Lineage

{_table(lineage)}

`lineage.json` holds the same record; `params.yaml`, `dvc.lock` and `validation.json` sit next to it.
To restore the data: `git checkout {lineage.get('git_commit', '<commit>')} && dvc checkout`
(when `dvc_lock_committed` is false, put this model's `dvc.lock` in place before `dvc checkout`).

{_use_and_limits(name, task)}"""


def _use_and_limits(name: str, task: str) -> str:
    return f"""## How to use

```bash
lmforge predict {name}@champion "some text"
mlflow models serve -m models:/{name}@champion --env-manager local -p 5001
```

## Intended use

{USES.get(task, '')} A research artefact for comparing pretraining objectives at small scale.

## Limitations

- Small model, small corpus (the Python standard library's documentation by default): English
  technical prose only; outputs elsewhere are unreliable.
- Not evaluated for bias, safety or robustness; do not use for decisions about people.
- Metrics come from one held-out split; the comparison report gives bootstrap confidence
  intervals, which at this scale are wide.
"""
