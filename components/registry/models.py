"""MLflow Model Registry: models with their lineage, `challenger` -> `champion` behind a gate,
and manual promote / rollback with a recorded history.

A registered model's state is its aliases plus one tag, `lmforge.champion_history`: the list of
champion changes (gate, promote, rollback) with who, when and why. Every version carries its
gate metric, the hash of the test split it was scored on, and its lineage as tags.
"""
from __future__ import annotations

import getpass
import json
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from components.config import RegisterConfig
from components.registry import tracking
from components.registry.lineage import as_tags, from_tags, redact, tag, weights_digest

__all__ = ["CHALLENGER", "CHAMPION", "RegistryError", "decide_promotion", "model_name",
           "base_model_name", "register_model", "register_classifier", "promote", "rollback", "weights_digest",
           "check_no_remote_code", "registered_version"]

CHALLENGER, CHAMPION = "challenger", "champion"
TASKS = ("text-classification", "text-generation", "fill-mask", "token-classification")
HISTORY_TAG = tag("champion_history")
GATE_HISTORY_TAG = tag("gate_history")
HISTORY_KEEP = 100  # events kept in the tag (registry tag values are bounded); manual ones are also MLflow runs
AUDIT_EXPERIMENT = "lmforge-registry"


class RegistryError(ValueError):
    """A registry request that cannot be done; the message names the model, the version and the fix."""


def model_name(cfg: RegisterConfig, run: str) -> str:
    return f"{cfg.model_prefix}-{run}"


def base_model_name(cfg: RegisterConfig, objective: str) -> str:
    return f"{cfg.model_prefix}-{objective}-base"


def pip_requirements() -> list[str]:
    """The serving environment, pinned to what this process runs (local suffixes like +cpu dropped)."""
    out = []
    for dist in ("mlflow", "torch", "transformers", "tokenizers", "safetensors"):
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def decide_promotion(challenger: float, champion: float | None, min_improvement: float) -> tuple[bool, str]:
    """The gate: promote when there is no champion or the challenger beats it by > min_improvement."""
    if champion is None:
        return True, "no champion yet"
    if challenger > champion + min_improvement:
        return True, f"{challenger:.4f} beats champion {champion:.4f} by more than {min_improvement}"
    return False, f"{challenger:.4f} does not beat champion {champion:.4f} by more than {min_improvement}"


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def alias_version(client, name: str, alias: str):
    """The version behind `name@alias`, or None."""
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def history(client, name: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _record(client, name: str, event: dict[str, Any]) -> None:
    events = [*history(client, name), event][-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events, separators=(",", ":")))


def _move_champion(client, name: str, version: str, action: str, by: str, reason: str) -> dict[str, Any]:
    previous = alias_version(client, name, CHAMPION)
    event = {"action": action, "version": str(version), "previous": str(previous.version) if previous else None,
             "by": by, "at": _now(), "reason": redact(reason)[:300]}
    client.set_registered_model_alias(name, CHAMPION, str(version))
    _record(client, name, event)
    return event


def _load_for_task(model_dir: Path, task: str):
    """The model with the head its task needs. A BertForPreTraining (mlm_nsp) base loads as
    BertForMaskedLM: the encoder and MLM head are kept, the NSP head has no use in fill-mask."""
    from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)
    from transformers.utils import logging as hf_logging

    auto = {"text-classification": AutoModelForSequenceClassification, "text-generation": AutoModelForCausalLM,
            "fill-mask": AutoModelForMaskedLM, "token-classification": AutoModelForTokenClassification}[task]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "weights of the NSP head not used" is expected here
    try:
        model = auto.from_pretrained(str(model_dir))
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def check_no_remote_code(model_dir: Path) -> None:
    """Refuse a model that would need code from outside transformers (MLflow's loader turns on
    trust_remote_code for such models): only built-in classes are loaded here."""
    import transformers
    import yaml

    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"].get("transformers")
    if flavor is None:
        raise RegistryError(f"{model_dir}: not a transformers-flavor model")
    for key in ("instance_type", "model_type", "tokenizer_type"):
        cls = flavor.get(key)
        if cls and not hasattr(transformers, cls):
            raise RegistryError(f"{model_dir}: {key} {cls} is not a transformers class; refusing custom code")
    for config in model_dir.rglob("config.json"):
        if "auto_map" in json.loads(config.read_text()):
            raise RegistryError(f"{config}: declares auto_map (custom code); refusing to load it")


def serving_config(model, tokenizer, task: str) -> tuple[dict[str, Any], list[str]]:
    """(pyfunc model_config, input example) so every serving path encodes as evaluation did.

    The tokenizer is set in place to the trained length (its `model_max_length`, never past the
    model's positions), right padding and right truncation, and saved that way, so
    `truncation=True` alone reproduces evaluation. MLflow passes `model_config` as keyword
    arguments to each pipeline call of pyfunc predict (what `mlflow models serve` runs);
    transformers tokenizers have no truncate-by-default setting, so it must be said there."""
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    length = min(int(tokenizer.model_max_length), int(positions or tokenizer.model_max_length))
    tokenizer.model_max_length, tokenizer.padding_side, tokenizer.truncation_side = length, "right", "right"
    if task == "text-classification":
        return {"truncation": True, "max_length": length}, ["Return the number of items in the list."]
    if task == "fill-mask":
        return ({"tokenizer_kwargs": {"truncation": True, "max_length": length}},
                [f"Return the number of {tokenizer.mask_token} in the list."])
    if task == "token-classification":  # rtd's detector: which tokens look replaced
        return {}, ["Return the number of sockets in the list."]
    return {}, ["Return the number of"]  # generation: the prompt is the user's; generate() bounds the length


def load_version(version, return_type: str = "pipeline"):
    """A registered version as a transformers pipeline (or its components), after the custom-code check.
    The pipeline carries the version's logged inference config (truncation to the trained length)."""
    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}"))
    check_no_remote_code(local)
    if return_type != "pipeline":
        return mlflow.transformers.load_model(str(local), return_type=return_type)
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("python_function", {})
    config = dict(pyfunc.get("config") or {})  # pyfunc.add_to_model stores model_config as "config"
    return mlflow.transformers.load_model(str(local), return_type=return_type, **config)


def _existing_version(client, name: str, digest: str):
    for version in client.search_model_versions(f"name='{name}'"):
        if from_tags(version.tags).get("weights_sha256") == digest:
            return version
    return None


def _log_and_register(name: str, model_dir: Path, task: str, tags: dict[str, str], files: dict[str, str | Path],
                      card: str, description: str):
    """Log the transformers flavor (safetensors, pinned requirements), put the model card, the
    lineage and the files next to it in the model's artifacts, then register it with its tags."""
    import mlflow
    from huggingface_hub import ModelCard

    model, tokenizer = _load_for_task(model_dir, task)
    card_text = redact(card)
    inference_config, example = serving_config(model, tokenizer, task)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=task,
        model_config=inference_config,
        input_example=example,
        pip_requirements=pip_requirements(),
        model_card=ModelCard(card_text),  # given, so MLflow does not try the hub for one
        metadata={"lmforge_task": task},
    )
    client = _client()
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp)
        (extra / "README.md").write_text(card_text)
        (extra / "lineage.json").write_text(json.dumps(tags, indent=2, sort_keys=True))
        for target, source in files.items():
            if Path(source).exists():
                (extra / target).write_text(redact(Path(source).read_text()))
        client.log_model_artifacts(info.model_id, str(extra))
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    client.update_model_version(name, version.version, description=_version_description(card_text, description))
    return client.get_model_version(name, version.version)


DESCRIPTION_CHARS = 4000  # below MLflow's 5000-character column


def _version_description(card: str, summary: str) -> str:
    """The model card as the version's description (the MLflow UI shows it as markdown on the
    version's page), after a one-line summary; a long card is cut, pointing at the whole one."""
    text = f"{summary}\n\n{card}"
    if len(text) <= DESCRIPTION_CHARS:
        return text
    more = "\n\n... (the whole card: README.md in this version's artifacts)"
    return text[:DESCRIPTION_CHARS - len(more)] + more


def register_model(name: str, model_dir: Path, task: str, metrics: dict[str, float], lineage: dict[str, str],
                   cfg: RegisterConfig, files: dict[str, str | Path] | None = None, card: str = "",
                   evidence: Callable[[Any], dict | None] | None = None) -> dict[str, Any]:
    """Register `model_dir` as a new version of `name` (alias `challenger`) and run the gate.

    The same weights again return their existing version: no duplicate, and no new gate
    decision (a version rolled back by hand is not promoted again by a rerun).
    `evidence(champion_version)` gives the paired-bootstrap CI of (this version - champion) on
    the gate metric over one test split ({"diff", "ci_low", "ci_high", ...}; None: the champion
    cannot be scored there); without it, or without a CI, nothing replaces a champion."""
    if task not in TASKS:
        raise ValueError(f"register: task for {name} must be one of {', '.join(TASKS)}, got {task!r}")
    if cfg.gate_metric not in metrics:
        raise ValueError(f"register: metrics for {name} lack the gate metric '{cfg.gate_metric}'")
    tracking.setup()
    client = _client()
    digest = weights_digest(model_dir)
    version = _existing_version(client, name, digest)
    new = version is None
    if new:
        tags = as_tags({"weights_sha256": digest, "task": task, "gate_metric": cfg.gate_metric,
                        **{k: f"{v:.6f}" for k, v in metrics.items()}, **lineage})
        metric_text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        version = _log_and_register(name, Path(model_dir), task, tags, files or {}, card,
                                    f"{task} from {model_dir}: {metric_text}")
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    champion, ci = alias_version(client, name, CHAMPION), None
    if champion is not None and str(champion.version) == str(version.version):
        promoted, reason = True, "already champion"
    elif not new:
        promoted = False
        reason = f"existing version, not gated again (gate said: {from_tags(version.tags).get('promotion', '?')})"
    else:
        promoted, reason, ci = _gate(version, champion, cfg, evidence)
        if promoted:
            _move_champion(client, name, version.version, "gate", "register", reason)
        client.set_model_version_tag(name, version.version, tag("promotion"), reason)
        _record_gate(client, name, version.version, champion, promoted, reason, ci)
    aliases = client.get_model_version(name, version.version).aliases
    return {"name": name, "version": int(version.version), "aliases": sorted(aliases), "promoted": promoted,
            "reason": reason, "new_version": new, "ci": ci}


def _gate(version, champion, cfg: RegisterConfig, evidence=None) -> tuple[bool, str, dict | None]:
    """(promoted, why, the CI or None). The first version has nothing to beat; after that only
    a paired CI on one test split replaces the champion (a point estimate crowns the luckiest draw)."""
    if champion is None:
        value = from_tags(version.tags).get(cfg.gate_metric)
        return (*decide_promotion(float(value) if value is not None else 0.0, None, cfg.min_improvement), None)
    if evidence is None:
        return False, (f"no paired test predictions to compare with champion v{champion.version}; "
                       f"the gate needs both models scored on one test split; promote by hand"), None
    ci = evidence(champion)
    if ci is None:
        return False, (f"not comparable: champion v{champion.version} cannot be scored on this test split "
                       f"(other labels); promote by hand after comparing on one split"), None
    promoted, reason = decide_paired(ci, cfg, champion.version)
    return promoted, reason, ci


def decide_paired(ci: dict, cfg: RegisterConfig, champion_version) -> tuple[bool, str]:
    """The gate on evidence: promote when the CI's lower bound exceeds register.min_improvement."""
    promoted = ci["ci_low"] > cfg.min_improvement
    return promoted, (f"{cfg.gate_metric} vs champion v{champion_version}: {ci['diff']:+.4f}, "
                      f"{cfg.confidence:.0%} paired-bootstrap CI [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}]; "
                      f"lower bound {'above' if promoted else 'not above'} {cfg.min_improvement}"
                      f"{ci.get('note', '')}")


def _record_gate(client, name: str, version, champion, promoted: bool, reason: str, ci: dict | None) -> None:
    """The decision and its CI on the version's tags and in the model's `lmforge.gate_history`
    (every gate decision; `lmforge.champion_history` keeps only champion changes)."""
    event = {"version": str(version), "champion": str(champion.version) if champion else None,
             "promoted": promoted, "at": _now(), "reason": reason[:300]}
    if ci is not None:
        for key in ("diff", "ci_low", "ci_high"):
            client.set_model_version_tag(name, version, tag(f"gate_{key}"), f"{ci[key]:.6f}")
            event[key] = round(float(ci[key]), 6)
    client.set_model_version_tag(name, version, tag("gate_champion"), event["champion"] or "none")
    events = json.loads(client.get_registered_model(name).tags.get(GATE_HISTORY_TAG, "[]"))
    client.set_registered_model_tag(name, GATE_HISTORY_TAG,
                                    json.dumps([*events, event][-HISTORY_KEEP:], separators=(",", ":")))


def register_classifier(name: str, model_dir: Path, metrics: dict[str, float], tags: dict[str, str],
                        cfg: RegisterConfig, evidence: Callable[[Any], dict | None] | None = None) -> dict[str, Any]:
    """A fine-tuned classifier (task text-classification, its label names in the config)."""
    return register_model(name, model_dir, "text-classification", metrics, tags, cfg, evidence=evidence)


def _require_model(client, name: str) -> None:
    import mlflow

    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise RegistryError(f"{name}: no such registered model in {redact(mlflow.get_tracking_uri())}; run the "
                            f"register stage (dvc repro), or check the name and the store (lmforge --repo)") from None


def registered_version(client, name: str, version: str | int | None = None, alias: str | None = None):
    """`name` v`version`, or the version behind `name@alias`; else a RegistryError saying what
    is missing and how to find what there is."""
    import mlflow

    _require_model(client, name)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        pass
    if alias:
        raise RegistryError(f"{name}: no alias @{alias}; `lmforge promote {name} <version>` sets the champion, "
                            f"`lmforge lineage {name}/<version>` shows a version")
    known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    raise RegistryError(f"{name} v{version}: no such version; known versions: {', '.join(map(str, known)) or 'none'}")


def _audit(action: str, name: str, version: str | None, by: str, reason: str, outcome: str) -> None:
    """One MLflow run per manual action (experiment lmforge-registry): the long-term record."""
    import mlflow

    experiment_id = tracking.setup(AUDIT_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{action} {name}"):
        mlflow.set_tags(as_tags({"action": action, "model": name, "version": str(version), "by": by,
                                 "reason": reason, "outcome": outcome}))


def _set_version_tags(client, name: str, version, record: dict[str, str]) -> None:
    for key, value in as_tags(record).items():
        client.set_model_version_tag(name, str(version), key, value)


def promote(name: str, version: str | int, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Make `name` v`version` the champion by hand, past the gate. Idempotent: promoting the
    champion again changes nothing (the attempt is still recorded)."""
    tracking.setup()
    client = _client()
    by = by or _user()
    reason = reason or "manual promotion"
    target = registered_version(client, name, version)
    current = alias_version(client, name, CHAMPION)
    if current is not None and str(current.version) == str(target.version):
        outcome = f"{name} v{target.version} is already champion; nothing changed"
        changed = False
    else:
        event = _move_champion(client, name, target.version, "promote", by, reason)
        _set_version_tags(client, name, target.version,
                          {"promoted_by": by, "promoted_at": event["at"], "promotion": f"manual: {reason}"})
        outcome = f"{name} v{target.version} is champion (was {f'v{current.version}' if current else 'none'})"
        changed = True
    _audit("promote", name, target.version, by, reason, outcome)
    return {"name": name, "version": int(target.version), "changed": changed, "message": outcome}


def rollback(name: str, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Undo the last champion change: the champion goes back to the version it replaced.
    Idempotent: a second rollback finds the last change is a rollback and changes nothing
    (to go further back, `promote` the version you want)."""
    tracking.setup()
    client = _client()
    by = by or _user()
    reason = reason or "manual rollback"
    _require_model(client, name)
    events = history(client, name)
    current = alias_version(client, name, CHAMPION)
    if not events or current is None:
        raise RegistryError(f"{name}: no champion change recorded, nothing to roll back; "
                            f"use `lmforge promote {name} <version>`")
    last = events[-1]
    if last["action"] == "rollback" and last["version"] == str(current.version):
        outcome = f"{name}: already rolled back to v{current.version} (from v{last['previous']}); nothing changed"
        _audit("rollback", name, current.version, by, reason, outcome)
        return {"name": name, "version": int(current.version), "changed": False, "message": outcome}
    if last["version"] != str(current.version):
        raise RegistryError(f"{name}: champion is v{current.version} but the last recorded change made "
                            f"v{last['version']} champion (the alias was moved outside lmforge); "
                            f"use `lmforge promote {name} <version>`")
    if last["previous"] is None:
        raise RegistryError(f"{name} v{current.version}: there was no champion before it to roll back to; "
                            f"use `lmforge promote {name} <version>`")
    event = _move_champion(client, name, last["previous"], "rollback", by, reason)
    _set_version_tags(client, name, current.version, {"rolled_back": f"by {by} at {event['at']}: {reason}"})
    _set_version_tags(client, name, last["previous"], {
        "promotion": f"restored by rollback from v{current.version} ({by}, {event['at']}): {reason}"})
    outcome = f"{name} v{last['previous']} is champion again (rolled back from v{current.version})"
    _audit("rollback", name, last["previous"], by, reason, outcome)
    return {"name": name, "version": int(last["previous"]), "changed": True, "message": outcome}
