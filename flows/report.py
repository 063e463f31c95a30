"""What a flow run shows in the Prefect UI: a markdown report and a table of registry decisions.

Everything here reads files the stages wrote (and the MLflow runs they logged); nothing in
it decides what runs. URLs are shown without credentials.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from components import paths
from components.registry.lineage import redact
from components.registry.tracking import mlflow_defaults, tracking_uri

# What `mlflow ui --backend-store-uri sqlite:///mlflow.db` serves, for links into a SQLite store.
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"


@contextlib.contextmanager
def _bounded_mlflow_requests() -> Iterator[None]:
    """A report must not wait minutes on a tracking server that is down (MLflow's default retries)."""
    added = {k: v for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))
             if k not in os.environ}
    os.environ.update(added)
    mlflow_defaults()  # the rest of lmforge's defaults, telemetry off; the bounds above win
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def mlflow_run_links(repo_dir: Path, stages: list[str]) -> dict[str, str]:
    """{stage: URL of the newest MLflow run named after it} (run names are DVC stage names)."""
    uri = tracking_uri(repo_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    ui = redact(uri) if uri.startswith(("http://", "https://")) else os.environ.get("LMFORGE_MLFLOW_UI", DEFAULT_MLFLOW_UI)
    with _bounded_mlflow_requests():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("lmforge")
        if experiment is None:
            return {}
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=1000)
    links: dict[str, str] = {}
    for run in runs:
        if run.info.run_name in stages:
            links.setdefault(run.info.run_name,
                             f"{ui.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    return links


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_metrics(repo_dir: Path, stage: str) -> str:
    """A few headline numbers a stage wrote, for the stage table."""
    name, _, item = stage.partition("@")
    if name == "pretrain":
        data = _read_json(repo_dir / paths.PRETRAIN_REPORTS / item / "metrics.json") or {}
        return ", ".join(f"{k} {v:.3f}" for k, v in data.items() if k.startswith("val_") and isinstance(v, (int, float)))
    if name == "finetune":
        data = _read_json(repo_dir / paths.FINETUNE_REPORTS / f"{item}.json") or {}
        return ", ".join(f"{k} {v:.3f}" for k, v in data.items() if k.startswith(("val_", "test_"))
                         and isinstance(v, (int, float)) and not isinstance(v, bool))
    return ""


def markdown_report(repo_dir: Path, title: str, settings: dict[str, str], outcomes: dict[str, dict],
                    left_out: dict[str, str], links: dict[str, str]) -> str:
    lines = [f"# {title}", "", " · ".join(f"**{k}** {redact(str(v))}" for k, v in settings.items()), "",
             "| # | stage | result | seconds | MLflow run | metrics |", "|---|---|---|---|---|---|"]
    for i, (stage, outcome) in enumerate(outcomes.items(), 1):
        link = f"[{stage}]({links[stage]})" if stage in links else "-"
        seconds = f"{outcome['seconds']:.1f}" if outcome.get("seconds") is not None else "-"
        lines.append(f"| {i} | `{stage}` | {outcome['result']} | {seconds} | {link} | {stage_metrics(repo_dir, stage)} |")
    for stage, why in left_out.items():
        lines.append(f"| - | `{stage}` | left out: {why} | - | - | |")
    comparison = repo_dir / paths.COMPARISON_MD
    if comparison.exists() and "evaluate" in outcomes:
        # The table and its verdicts; images and samples stay in the file (relative links).
        table = [line for line in comparison.read_text().split("\n## ")[0].splitlines()[1:] if not line.startswith("![")]
        lines += ["", f"## Downstream results ({paths.COMPARISON_MD})", *table]
    return "\n".join(lines) + "\n"


def registry_table(repo_dir: Path) -> list[dict] | None:
    """The register stage's decisions (reports/registry.json) as table rows."""
    data = _read_json(repo_dir / paths.REGISTRY_JSON)
    if not data:
        return None
    rows = []
    for m in data.get("models", []):
        rows.append({"objective": m.get("objective"), "model": m.get("name"), "version": m.get("version"),
                     "aliases": ", ".join(m.get("aliases", [])), "promoted": m.get("promoted"),
                     "new version": m.get("new_version"), "reason": m.get("reason")})
    return rows
