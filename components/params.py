"""params.yaml -> the typed configs of components/config.py, with profiles and one sequence length.

A value comes from the first of: ``params.yaml`` (a non-null key), the profile's differences
from demo (``PROFILES``), the sequence-length knob for the keys that follow it (``FOLLOWS``),
the dataclass default (which is demo). ``load_params`` reads the file once, resolves and checks
every section (so a bad value meant for a late stage fails the first stage ``dvc repro`` runs)
and remembers where each value came from (``lmforge check-params --show``). An unknown key,
a wrong type or a bad value is a one-line ``ConfigError`` naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import SECTIONS
from components.io import load_yaml

PARAMS_FILE = "params.yaml"
TOP_LEVEL = {"profile": "demo", "seed": 1337, "objectives": ("clm", "mlm", "mlm_nsp")}
"""Top-level params and their defaults. `objectives` is the list of objectives the pipeline runs
(dvc.yaml's per-objective stages iterate over it); components.objectives checks the names
against the specs (this core module does not know them)."""

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds per stage, for tests and CI.
    "tiny": {
        "data": {"max_documents": 150},
        "downstream": {"max_examples_per_split": 120},
        "validate": {"min_documents": 20, "min_characters": 10_000},
        "tokenizer": {"vocab_size": 600},
        "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_ff": 64, "max_positions": 64},
        "pretrain": {"max_steps": 8, "batch_size": 8, "eval_every": 4,
                     "eval_batches": 2, "log_every": 2, "checkpoint_every": 4},
        "finetune": {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "lr_grid": "1e-3,3e-3", "seeds": 2},
        "evaluate": {"bootstrap_samples": 200},
    },
    # The dataclass defaults, with a label budget: 100 labelled examples (chosen on validation
    # from the label curve; the built-in task's every training text stays in the pretraining
    # corpus, so pretraining sees about 40x more text than fine-tuning has labels), and
    # fine-tuning's length by the same rule for every run: up to 20 epochs or 120 steps, a
    # validation macro-F1 every 20 steps, early stopping after 3 without a better one, so no run
    # stops before step 80 whatever the label budget (an evaluation each epoch stopped scratch
    # BERT on its starting plateau at step 16 at 100 labels: docs/RECIPE.md, "Labels as a
    # budget"); fine-tuning truncates to 48 tokens (most docstrings fit) for speed.
    "demo": {"downstream": {"train_examples": 100},
             "finetune": {"max_length": 48, "epochs": 20, "max_steps": 120, "eval_every": 20, "patience": 3}},
    # GPT-2 124M / BERT-base shapes for a GPU worker.
    "gpu-small": {
        "tokenizer": {"vocab_size": 32_000},
        "model": {"n_layers": 12, "n_heads": 12, "d_model": 768, "d_ff": 3072, "max_positions": 512},
        "pretrain": {"max_steps": 10_000, "batch_size": 32, "grad_accum": 4, "lr": 6e-4,
                     "eval_every": 500, "eval_batches": 50, "log_every": 50,
                     "checkpoint_every": 500},
        "finetune": {"epochs": 4, "warmup_steps": 100, "lr_grid": "3e-5,5e-5,1e-4"},
    },
}
"""Each profile's differences from the dataclass defaults (= demo)."""

SEQUENCE_LENGTH = "model.max_positions"
"""The one sequence-length knob: the model's position embeddings bound every other length."""
FOLLOWS = ("tokenize.block_size", "tokenizer.model_max_length", "finetune.max_length")
"""Keys that take SEQUENCE_LENGTH's value unless params.yaml or the profile sets them."""
LIMITS = (
    ("tokenize.block_size", "model.max_positions"),
    ("finetune.max_length", "model.max_positions"),
    ("tokenize.block_size", "tokenizer.model_max_length"),
)
"""(key, limit): the key's value may not exceed the limit's. Checked here only."""

STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("profile", "seed", "data", "downstream"),
    "validate": ("profile", "validate"),
    "train_tokenizer": ("profile", "tokenizer", SEQUENCE_LENGTH),
    "tokenize": ("profile", "seed", "tokenize", SEQUENCE_LENGTH),
    "pretrain": ("profile", "seed", "model", "pretrain"),
    "finetune": ("profile", "seed", "model", "finetune"),
    "finetune_scratch": ("profile", "seed", "model", "finetune"),
    "evaluate": ("profile", "seed", "objectives", "evaluate"),
    "register": ("profile", "objectives", "register"),
}
"""The params each stage's outputs depend on. dvc.yaml declares exactly these
(tests/test_dvc_yaml.py checks it), so a change reruns the right stages; a stage is handed
its top-level values and whole sections (a dotted key reaches it through a follower)."""


class ConfigError(ValueError):
    """A bad params.yaml: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Params:
    """Every section resolved and checked, with where each value came from."""

    profile: str
    seed: int
    objectives: tuple[str, ...]
    """The objectives the pipeline runs, in params.yaml's order."""
    configs: dict[str, Any]
    """Section name -> its config (a components.config dataclass)."""
    sources: dict[str, str]
    """Dotted key -> "default", "profile <name>", "params.yaml" or "follows <knob>"."""

    def for_stage(self, stage: str) -> dict[str, Any]:
        """What `stage` may read: its declared top-level values and sections."""
        top = {"profile": self.profile, "seed": self.seed, "objectives": self.objectives}
        return {name: top[name] if name in top else self.configs[name]
                for name in STAGE_PARAMS[stage] if "." not in name}

    def values(self) -> dict[str, Any]:
        """Dotted key -> resolved value, top-level keys first, then sections in pipeline order."""
        out: dict[str, Any] = {"profile": self.profile, "seed": self.seed, "objectives": list(self.objectives)}
        for section, cfg in self.configs.items():
            out.update({f"{section}.{k}": v for k, v in dataclasses.asdict(cfg).items()})
        return out


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; run from the repository root or pass --params")
    try:
        params = load_yaml(path.read_text(encoding="utf-8")) or {}
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


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml read once, every section resolved and checked (raises ConfigError)."""
    return resolve(read_params(path))


def load_stage(stage: str, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """One stage's configs, from a single read in which the whole file was checked."""
    return load_params(path).for_stage(stage)


def resolve(params: dict[str, Any]) -> Params:
    """Every section of a params mapping as its typed config, then the limits across sections."""
    seed = _check_type(params.get("seed", TOP_LEVEL["seed"]), int, "seed")
    profile = params.get("profile", TOP_LEVEL["profile"])
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ConfigError(f"params.yaml: 'profile' must be one of {', '.join(PROFILES)}, got {profile!r}")
    objectives = _check_objectives_list(params.get("objectives", list(TOP_LEVEL["objectives"])))
    sources = {key: "params.yaml" if key in params else "default" for key in TOP_LEVEL}
    configs: dict[str, Any] = {}
    knob_section = SEQUENCE_LENGTH.partition(".")[0]
    # The knob's section first: the keys that follow it need its value.
    for section in [knob_section, *(s for s in SECTIONS if s != knob_section)]:
        configs[section] = _resolve_section(params, section, profile, configs.get(knob_section), sources)
    configs = {section: configs[section] for section in SECTIONS}
    check_across_sections(configs)
    return Params(profile, seed, objectives, configs, sources)


def _check_objectives_list(value: Any) -> tuple[str, ...]:
    """`objectives`: a non-empty list of distinct names (their validity: components.objectives)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"params.yaml: 'objectives' must be a non-empty list of objective names, "
                          f"e.g. [clm, mlm], got {value!r}")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise ConfigError(f"params.yaml: 'objectives' lists {repeated[0]!r} twice")
    return tuple(value)


def _resolve_section(params: dict[str, Any], section: str, profile: str, knob_config: Any,
                     sources: dict[str, str]) -> Any:
    explicit = params.get(section) or {}
    if not isinstance(explicit, dict):
        raise ConfigError(f"params.yaml: section '{section}' must be a mapping, got {explicit!r}")
    # null in params.yaml means "not set here": the profile's value, the knob's or the default applies.
    layers = [("params.yaml", {k: v for k, v in explicit.items() if v is not None}),
              (f"profile {profile}", PROFILES[profile].get(section, {}))]
    if knob_config is not None:
        knob = getattr(knob_config, SEQUENCE_LENGTH.partition(".")[2])
        layers.append((f"follows {SEQUENCE_LENGTH}",
                       {key.partition(".")[2]: knob for key in FOLLOWS if key.startswith(f"{section}.")}))
    merged: dict[str, Any] = {}
    for source, values in reversed(layers):
        merged.update(values)
        sources.update({f"{section}.{k}": source for k in values})
    try:
        config = build_config(SECTIONS[section], merged, section)
    except ConfigError as e:
        followed = [k for k in FOLLOWS if k in str(e) and sources.get(k, "").startswith("follows")]
        if followed:
            raise ConfigError(f"{e} ({followed[0]} follows {SEQUENCE_LENGTH}: raise that or set {followed[0]})") from None
        raise
    for field in dataclasses.fields(config):
        sources.setdefault(f"{section}.{field.name}", "default")
    return config


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


def check_across_sections(configs: dict[str, Any]) -> None:
    """Limits one section puts on another (each section checks its own in __post_init__)."""

    def value(key: str) -> Any:
        section, _, name = key.partition(".")
        return getattr(configs[section], name)

    for key, limit in LIMITS:
        if value(key) > value(limit):
            raise ConfigError(f"params.yaml: {key} ({value(key)}) exceeds {limit} ({value(limit)}); "
                              "lower one or raise the other")
    pretrain, tokenizer = configs["pretrain"], configs["tokenizer"]
    if pretrain.batch_size % pretrain.nproc_per_node:
        raise ConfigError(f"params.yaml: pretrain.batch_size ({pretrain.batch_size}) must be divisible by "
                          f"pretrain.nproc_per_node ({pretrain.nproc_per_node})")
    for architecture in ("gpt2", "bert"):
        source = tokenizer.pretrained(architecture)
        if source and not Path(source).is_dir():
            raise ConfigError(f"params.yaml: tokenizer.pretrained_{architecture}: no directory {source!r}; "
                              "give a local tokenizer directory or '' to train one")


def _shown(key: Any) -> str:
    """A key as one line of text (YAML keys may hold newlines, or be numbers)."""
    return repr(key)[1:-1] if isinstance(key, str) else repr(key)


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
