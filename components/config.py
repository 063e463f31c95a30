"""Typed stage configs loaded from one section each of params.yaml, with profiles.

Each component owns a frozen dataclass config (its fields documented, checked in
``__post_init__``). This module only knows how to turn a ``params.yaml`` section into one:
profile defaults first, then the keys written in ``params.yaml``; an unknown key, a
wrong type or a bad value is a one-line ``ConfigError`` naming the key.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"

# section name -> "module:Class" (imported lazily so light stages don't import torch).
SECTIONS: dict[str, str] = {
    "data": "components.data.corpus:DataConfig",
    "downstream": "components.data.corpus:DownstreamConfig",
    "validate": "components.data.validation:ValidateConfig",
    "tokenizer": "components.tokens.tokenization:TokenizerConfig",
    "tokenize": "components.tokens.tokenization:TokenizeConfig",
    "model": "components.train.models:ModelConfig",
    "pretrain": "components.train.pretraining:PretrainConfig",
    "finetune": "components.train.finetuning:FinetuneConfig",
    "evaluate": "components.evaluate.metrics:EvaluateConfig",
    "register": "components.registry.models:RegisterConfig",
}

# Top-level scalar params and the sections each stage reads. dvc.yaml must declare
# exactly these (tests/test_dvc_yaml.py checks it), so a change re-runs the right stages.
TOP_LEVEL = ("profile", "seed")
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("profile", "seed", "data", "downstream"),
    "validate": ("profile", "validate"),
    "train_tokenizer": ("profile", "tokenizer"),
    "tokenize": ("profile", "seed", "tokenize"),
    "pretrain": ("profile", "seed", "model", "pretrain"),
    "finetune": ("profile", "seed", "model", "finetune"),
    "evaluate": ("profile", "seed", "evaluate"),
    "register": ("profile", "register"),
}
PROFILES = ("tiny", "demo", "gpu-small")


class ConfigError(ValueError):
    """A bad params.yaml: the message names the file, the key and the fix."""


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    unknown = sorted(map(_shown, set(params) - set(SECTIONS) - set(TOP_LEVEL)))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section '{unknown[0]}'; known: {', '.join([*TOP_LEVEL, *SECTIONS])}"
        )
    return params


def _shown(key: Any) -> str:
    """A key as one line of text (YAML keys may hold newlines, or be numbers)."""
    return repr(key)[1:-1] if isinstance(key, str) else repr(key)


def config_class(section: str) -> type:
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _check_type(value, non_none[0], where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"params.yaml: '{where}' must be a list, got {value!r}")
        (item_t, *_rest) = typing.get_args(annotation) or (Any,)
        return tuple(_check_type(v, item_t, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params.yaml: '{where}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params.yaml: '{where}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params.yaml: '{where}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"params.yaml: '{where}' must be a string, got {value!r}")
        return value
    return value


def build_config(cls: type, values: dict[str, Any], section: str) -> Any:
    """Make `cls` from a dict, refusing unknown keys and wrong types by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml: section '{section}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(_shown, set(values) - fields))
    if unknown:
        raise ConfigError(
            f"params.yaml: unknown key '{section}.{unknown[0]}'; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"params.yaml: section '{section}': {e}") from None


def profile_defaults(profile: str, section: str) -> dict[str, Any]:
    from components.profiles import PROFILE_VALUES

    return dict(PROFILE_VALUES[profile].get(section, {}))


def resolve_section(params: dict[str, Any], section: str) -> Any:
    """The typed config for one section: profile values, then explicit params.yaml keys."""
    profile = params.get("profile", "demo")
    if profile not in PROFILES:
        raise ConfigError(f"params.yaml: 'profile' must be one of {', '.join(PROFILES)}, got {profile!r}")
    explicit = params.get(section) or {}
    if not isinstance(explicit, dict):
        raise ConfigError(f"params.yaml: section '{section}' must be a mapping, got {explicit!r}")
    # null in params.yaml means "not set here": the profile's value (or the default) applies.
    merged = {**profile_defaults(profile, section), **{k: v for k, v in explicit.items() if v is not None}}
    return build_config(config_class(section), merged, section)


def seed_of(params: dict[str, Any]) -> int:
    seed = params.get("seed", 1337)
    return _check_type(seed, int, "seed")


def load_stage(stage: str, params_path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Everything one stage may read: its declared sections as typed configs."""
    params = read_params(params_path)
    out: dict[str, Any] = {}
    for name in STAGE_PARAMS[stage]:
        if name == "profile":
            out[name] = params.get("profile", "demo")
        elif name == "seed":
            out[name] = seed_of(params)
        else:
            out[name] = resolve_section(params, name)
    return out


def validate_all(params_path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Check every section, then the ranges that span sections, before any compute is
    spent; returns the typed configs by section (raises ConfigError)."""
    params = read_params(params_path)
    seed_of(params)
    configs = {section: resolve_section(params, section) for section in SECTIONS}
    check_across_sections(configs)
    return configs


def check_across_sections(configs: dict[str, Any]) -> None:
    """Limits one section puts on another (each section checks its own in __post_init__)."""
    model, tokenize, tokenizer = configs["model"], configs["tokenize"], configs["tokenizer"]
    pretrain, finetune = configs["pretrain"], configs["finetune"]
    limits = [
        ("tokenize.block_size", tokenize.block_size, "model.max_positions", model.max_positions),
        ("finetune.max_length", finetune.max_length, "model.max_positions", model.max_positions),
        ("tokenize.block_size", tokenize.block_size, "tokenizer.model_max_length", tokenizer.model_max_length),
    ]
    for name, value, limit_name, limit in limits:
        if value > limit:
            raise ConfigError(f"params.yaml: {name} ({value}) exceeds {limit_name} ({limit}); "
                              "lower one or raise the other")
    if pretrain.batch_size % pretrain.nproc_per_node:
        raise ConfigError(f"params.yaml: pretrain.batch_size ({pretrain.batch_size}) must be divisible by "
                          f"pretrain.nproc_per_node ({pretrain.nproc_per_node})")
    for architecture in ("gpt2", "bert"):
        source = tokenizer.pretrained(architecture)
        if source and not Path(source).is_dir():
            raise ConfigError(f"params.yaml: tokenizer.pretrained_{architecture}: no directory {source!r}; "
                              "give a local tokenizer directory or '' to train one")
