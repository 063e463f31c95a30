"""MLflow set-up: the tracking URI, the experiment, and one run per stage execution."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from components.registry.lineage import as_tags, git_state, redact, tag

# No network here or on many clusters: MLflow's telemetry must not try to phone home (mlflow
# reads this switch when it is first imported). A tracking server that is down should fail a
# stage in seconds, not after MLflow's default 7 retries with exponential backoff (minutes)
# and a 120 s timeout per try. Metrics are logged synchronously, so a server lost mid-run
# fails the stage too: nothing is dropped silently, and a rerun resumes from the last
# checkpoint. Values already in the environment win.
MLFLOW_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

EXPERIMENT = "lmforge"


def mlflow_defaults() -> None:
    """Set MLFLOW_DEFAULTS where the environment has no value; call before importing mlflow."""
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)


def tracking_uri(root: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set (a server on PostgreSQL, say), else SQLite at the repo root
    (`root`, default the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root or Path.cwd()).resolve() / 'mlflow.db'}"


def unreachable_server(exc: BaseException) -> str | None:
    """A one-line description when `exc` is MLflow failing to reach its tracking server."""
    if not type(exc).__module__.startswith("mlflow"):
        return None
    uri = tracking_uri()
    text = str(exc)
    if not uri.startswith(("http://", "https://")) or not any(
        marker in text for marker in ("Max retries exceeded", "Connection refused", "ConnectionError",
                                      "Read timed out", "Failed to establish a new connection", "NameResolution")
    ):
        return None
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    reason = next((r for r in ("Connection refused", "timed out", "Name or service not known") if r in text),
                  "no answer")
    return (f"MLflow tracking server {uri} unreachable after {retries} retries ({reason}); start it or fix "
            "MLFLOW_TRACKING_URI (retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES); nothing was logged past this point")


def setup(experiment_name: str = EXPERIMENT, root: str | Path | None = None) -> str:
    """Point MLflow at our store and experiment; returns the experiment id."""
    mlflow_defaults()
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # Keep artifacts next to the database, not wherever the process happened to start.
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another stage
        return mlflow.get_experiment_by_name(experiment_name).experiment_id


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if hasattr(value, "__dataclass_fields__"):
        value = {k: getattr(value, k) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def data_hashes(objective: str | None) -> dict[str, str]:
    """DVC hashes (from dvc.lock) of the corpus and, per objective, the tokenized data."""
    from components import paths
    from components.registry.lineage import dvc_out_hashes

    hashes = dvc_out_hashes()
    wanted = {"corpus_md5": paths.CORPUS_DIR}
    if objective:  # only an objective has tokenized data: other names have no such out in dvc.lock
        wanted["tokenized_md5"] = paths.tokenized_dir(objective)
    return {k: hashes[v] for k, v in wanted.items() if v in hashes}


@contextlib.contextmanager
def stage_run(stage: str, config: dict[str, Any], objective: str | None = None,
              system_metrics: bool = False) -> Iterator[Any]:
    """One MLflow run per stage execution, tagged with stage, objective, git state and the
    DVC hashes of the data it descends from; optionally with CPU/GPU/memory sampling."""
    experiment_id = setup()
    import mlflow

    name = f"{stage}@{objective}" if objective else stage
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, log_system_metrics=system_metrics) as run:
        record = {"stage": stage, **git_state(), **data_hashes(objective)}
        if objective:
            record["objective"] = objective
        mlflow.set_tags(as_tags(record))
        mlflow.log_params({k: redact(str(v))[:500] for k, v in flatten("", config).items()})
        yield run
        _tag_model_weights(stage, objective)


# The model directory a stage writes, per stage: its weights hash tags the run, so the registry
# can name the exact pretraining / fine-tuning run behind a model version.
# For finetune, the primary model of the run (the one registered).
_MODEL_OUTPUTS = {"pretrain": "pretrained_dir", "finetune": "primary_model_dir"}


def _tag_model_weights(stage: str, objective: str | None) -> None:
    import mlflow

    from components import paths
    from components.registry.lineage import weights_digest

    if stage not in _MODEL_OUTPUTS or not objective:
        return
    try:
        model_dir = Path(getattr(paths, _MODEL_OUTPUTS[stage])(objective))
    except FileNotFoundError:  # no selection.json: nothing was saved
        return
    if any(model_dir.glob("*.safetensors")):
        mlflow.set_tag(tag("weights_sha256"), weights_digest(model_dir))


def find_stage_run(stage: str, objective: str, weights_sha256: str) -> tuple[str, str]:
    """(run id, how it was matched) of the finished `stage` run that wrote these weights:
    by the weights hash tag, else the newest finished run of that stage and objective
    ("latest", for runs made before the tag existed), else ("unknown", "none")."""
    mlflow_defaults()
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return "unknown", "none"
    base = (f"tags.`{tag('stage')}` = '{stage}' AND tags.`{tag('objective')}` = '{objective}' "
            f"AND attributes.status = 'FINISHED'")
    for query, how in ((f"{base} AND tags.`{tag('weights_sha256')}` = '{weights_sha256}'", "weights"), (base, "latest")):
        runs = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            return runs[0].info.run_id, how
    return "unknown", "none"


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Numbers as metrics; text (the device, the precision `dtype: auto` chose and why) as
    `lmforge.` tags, so a rerun can be told to use the same."""
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)
    text = {k: v for k, v in metrics.items() if isinstance(v, str)}
    if text:
        mlflow.set_tags(as_tags(text))
