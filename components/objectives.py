"""The objectives and architectures: one spec each, the only place that knows them by name.

An `Architecture` (gpt2, bert) knows its tokenizer, its model config and its sequence
classifier. An `Objective` (clm, mlm, mlm_nsp, rtd) knows its architecture, its pretraining model,
how its tokenized data is made (packed blocks or NSP pairs), how a batch is made and its
loss and validation metrics, its registry task, its model-card description, its line in
the report and its samples. A `FinetuneRun` is an objective's classifier or an
architecture's scratch twin. Stages, the loop, the report, the registry and the model
card ask a spec; they never compare names, and the name lists below are the only ones.

Importing this module imports neither torch nor transformers (the CLI and the flow read
the name lists): each method imports what it needs from components.tokens / train /
evaluate, which in turn never import this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from components import paths


@dataclass(frozen=True)
class Architecture:
    """A model family: tokenizer, model config, classifier and the scratch baseline."""

    name: str
    tokenizer_kind: str
    """What `train_tokenizer` trains (byte-level BPE, WordPiece)."""
    specials: Mapping[str, str]
    """The special tokens a trained tokenizer gets."""
    required_specials: tuple[str, ...]
    """What the pipeline needs from a tokenizer, trained or brought (`tokenizer.pretrained_<name>`)."""
    pad_if_missing: str | None
    """A pad token added to a brought tokenizer without one (or padding with EOS)."""
    classifier_class: str
    """The transformers class of a scratch classifier."""
    classifier_head: tuple[str, ...]
    """The classifier's head, as submodule paths: what runs in fp32 under bf16 autocast
    (components.train.models.fp32_head)."""
    scratch_description: str
    """The model card's line for the scratch baseline."""

    @property
    def scratch_run(self) -> str:
        return f"scratch-{self.name}"

    def train_tokenizer(self, texts: Iterable[str], cfg, out_dir: Path) -> dict:
        """Train this architecture's tokenizer on `texts`, or take `cfg`'s pretrained
        directory for it, and save it for AutoTokenizer; returns its stats."""
        from components.tokens.tokenization import use_pretrained_tokenizer

        source = cfg.pretrained(self.name)
        if source:
            return use_pretrained_tokenizer(self.name, Path(source), cfg, out_dir, self.required_specials,
                                            self.pad_if_missing)
        return {**self._train_tokenizer(texts, cfg, out_dir), "architecture": self.name}

    def build_classifier(self, cfg, tokenizer, labels: list[str], pretrained_dir: Path | None):
        """A sequence classifier: from a pretrained directory, or randomly initialised (scratch)."""
        from components.train.models import build_classifier

        return build_classifier(self.classifier_class, lambda **kw: self.model_config(cfg, tokenizer, **kw),
                                labels, pretrained_dir)

    def _train_tokenizer(self, texts: Iterable[str], cfg, out_dir: Path) -> dict:
        raise NotImplementedError

    def model_config(self, cfg, tokenizer, **extra):
        """The transformers config of this architecture at `cfg`'s (params `model`) shape."""
        raise NotImplementedError

    def prepare_classifier_tokenizer(self, tokenizer, max_length: int):
        """Make the tokenizer add what the classifier reads, so training, evaluation and the
        served pipeline encode a text identically."""
        tokenizer.model_max_length = max_length
        return tokenizer

    def unpadded_logits(self, model, ids, positions, packing):
        """The classifier's logits from a packed row of real tokens (ids and positions (1, T),
        a components.train.unpad.Packing): what its padded forward gives (`finetune.unpad`)."""
        raise NotImplementedError


# Our `model` params -> each transformers config's own names for them.
GPT2_NAMES = {"vocab_size": "vocab_size", "max_positions": "n_positions", "d_model": "n_embd",
              "n_layers": "n_layer", "n_heads": "n_head", "d_ff": "n_inner",
              "dropout": ("resid_pdrop", "embd_pdrop", "attn_pdrop"), "pad_token_id": "pad_token_id"}
BERT_NAMES = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
              "n_heads": "num_attention_heads", "d_ff": "intermediate_size",
              "max_positions": "max_position_embeddings",
              "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob"), "pad_token_id": "pad_token_id"}


class GPT2Architecture(Architecture):
    def _train_tokenizer(self, texts, cfg, out_dir):
        from components.tokens.tokenization import train_byte_level_bpe

        return train_byte_level_bpe(texts, cfg, out_dir, dict(self.specials))

    def model_config(self, cfg, tokenizer, **extra):
        from components.train.models import transformers_config

        # pad differs from eos so EOS keeps its label, and classification finds the last real token.
        # GPT-2's GELU (the tanh approximation) as torch's one kernel, `gelu_pytorch_tanh`, not
        # `gelu_new`, the same formula in eight elementwise ops that took a quarter of a CPU
        # fine-tuning step: 1.25x the step, outputs within 5e-7 (benchmarks/README.md, issue 26).
        return transformers_config("GPT2Config", GPT2_NAMES, cfg, tokenizer, fixed={
            "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "activation_function": "gelu_pytorch_tanh"}, **extra)

    def prepare_classifier_tokenizer(self, tokenizer, max_length):
        # GPT-2 classifies from the last non-pad token: an appended EOS gives it one to read.
        from components.train.finetuning import append_eos

        append_eos(tokenizer)
        return super().prepare_classifier_tokenizer(tokenizer, max_length)

    def unpadded_logits(self, model, ids, positions, packing):
        # No key/value cache: GPT-2's config asks for one, and filling it costs a copy per layer.
        hidden = model.transformer(input_ids=ids, position_ids=positions, use_cache=False,
                                   lmforge_packing=packing).last_hidden_state[0]
        return model.score(hidden[packing.last])  # each row's last token: the appended EOS


class BertArchitecture(Architecture):
    # BERT's tokenizer already adds [CLS] ... [SEP]; its classifier reads the pooled [CLS].
    def _train_tokenizer(self, texts, cfg, out_dir):
        from components.tokens.tokenization import train_wordpiece

        return train_wordpiece(texts, cfg, out_dir, dict(self.specials))

    def model_config(self, cfg, tokenizer, **extra):
        from components.train.models import transformers_config

        return transformers_config("BertConfig", BERT_NAMES, cfg, tokenizer, fixed={"type_vocab_size": 2}, **extra)

    def unpadded_logits(self, model, ids, positions, packing):
        import torch

        hidden = model.bert(input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids),
                            lmforge_packing=packing).last_hidden_state[0]
        pooled = model.bert.pooler(hidden[packing.first][:, None])  # the pooler reads position 0: [CLS]
        return model.classifier(model.dropout(pooled))


@dataclass(frozen=True)
class Objective:
    """A pretraining objective: what it trains, on what data, and how it is judged."""

    name: str
    architecture: Architecture
    model_class: str
    """The transformers class pretrained (and saved) for this objective."""
    registry_task: str
    """The pipeline task its pretrained base is registered with."""
    description: str
    """The model card's line for it."""
    report_metrics: tuple[str, ...]
    """Validation metrics the comparison report and the registry keep."""
    baselines: Mapping[str, str]
    """Each shown validation metric -> its trivial baseline's metric, computed on the same
    validation targets (components.train.pretraining.TokenBaseline): what the model card
    puts side by side. Every key and value is in `report_metrics`."""

    rival: str | None = None
    """An objective this one is judged against at equal pretraining FLOPs (evaluate reports
    the paired difference); with `pretrain.rtd_equal_flops`-style params its steps are cut to
    the rival's FLOPs (`steps_at_equal_flops`)."""

    def build_model(self, cfg, tokenizer, train_cfg=None):
        """The pretraining model at `cfg`'s (params `model`) shape, randomly initialised, SDPA
        attention; `train_cfg` (params `pretrain`) for objectives whose model it shapes."""
        import transformers

        config = self.architecture.model_config(cfg, tokenizer, attn_implementation="sdpa")
        return getattr(transformers, self.model_class)(config)

    def saved_model(self, model):
        """What the pretrain stage saves, fine-tuning loads and the registry serves: the model
        itself (rtd: its discriminator)."""
        return model

    def masked_fraction(self, train_cfg) -> float:
        """The share of tokens a masked-only head runs on (components/train/flops.py)."""
        return train_cfg.mlm_probability

    def max_steps(self, cfg, tokenizer, train_cfg, block_size: int, real_fraction: float) -> int:
        """Optimiser steps this objective trains for: pretrain.max_steps."""
        return train_cfg.max_steps

    def pretraining_summary(self, metrics: dict) -> tuple[dict, str]:
        """(the kept validation metrics, the report's one-line summary) from pretraining's metrics.json."""
        kept = {k: metrics[k] for k in self.report_metrics if k in metrics}
        return kept, self.summary_line(metrics)

    def tokenize_split(self, tokenizer, texts: Iterable[str], cfg, seed: int, out_prefix: str) -> dict:
        """Stream one split's texts into `<out_prefix>.<array>.npy` files; returns its stats."""
        raise NotImplementedError

    def training(self, tokenizer, cfg):
        """How a batch is made, its loss and validation metrics (components.train.pretraining)."""
        raise NotImplementedError

    def summary_line(self, metrics: dict) -> str:
        """The report's, the summary's and the progress line's one line: every metric next
        to its trivial baseline (where metrics.json has it) and how far it is from it."""
        raise NotImplementedError

    def at_baseline(self, metrics: dict) -> str | None:
        """Why pretraining did not train at this budget (its deciding validation metric sits at
        its trivial baseline), or None: it trained, or metrics.json lacks the baseline. The
        comparison then gives no verdict on the objective (components/evaluate/comparison.py)."""
        raise NotImplementedError

    def samples(self, model_dir: Path) -> list[dict]:
        """What the pretrained model says on fixed prompts (the report's samples)."""
        raise NotImplementedError


class CausalLM(Objective):
    """Next-token prediction on documents joined with EOS into fixed blocks."""

    def tokenize_split(self, tokenizer, texts, cfg, seed, out_prefix):
        from components.tokens.tokenization import tokenize_packed

        return tokenize_packed(tokenizer, texts, cfg, out_prefix, sep_id=tokenizer.eos_token_id, cls_id=None,
                               with_words=False)

    def training(self, tokenizer, cfg):
        from components.train.pretraining import CausalLMTraining

        within = cfg.clm_document_attention == "within"
        return CausalLMTraining(tokenizer.eos_token_id if within else None)

    def summary_line(self, metrics):
        text = f"perplexity {metrics['val_perplexity']:.1f}"
        if "val_unigram_perplexity" in metrics:
            unigram, perplexity = metrics["val_unigram_perplexity"], metrics["val_perplexity"]
            versus = (f"{unigram / perplexity:.2f}x lower" if perplexity <= unigram
                      else f"{perplexity / unigram:.2f}x higher: not yet past the unigram model")
            text += f" (unigram {unigram:.1f}: {versus})"
        return text

    UNIGRAM_SHARE = 0.9
    """Did not train: validation perplexity >= this share of the unigram model's. A model that
    learned token frequencies only sits at the unigram perplexity; less than 10% below it,
    context has bought next to nothing."""

    def at_baseline(self, metrics):
        if "val_unigram_perplexity" not in metrics:
            return None
        perplexity, unigram = metrics["val_perplexity"], metrics["val_unigram_perplexity"]
        if perplexity < self.UNIGRAM_SHARE * unigram:
            return None
        return (f"perplexity {perplexity:.1f} >= {self.UNIGRAM_SHARE:g}x the unigram model's "
                f"{unigram:.1f}")

    def samples(self, model_dir):
        from components.evaluate.report import generation_samples

        return generation_samples(model_dir)


@dataclass(frozen=True)
class MaskedLM(Objective):
    """Masked-token prediction (80/10/10), on [CLS] ... [SEP] blocks or, with
    `next_sentence`, on BERT sentence pairs with the next-sentence loss added."""

    next_sentence: bool = False

    def tokenize_split(self, tokenizer, texts, cfg, seed, out_prefix):
        from components.tokens.tokenization import tokenize_nsp_pairs, tokenize_packed

        if self.next_sentence:
            return tokenize_nsp_pairs(tokenizer, texts, cfg, seed, out_prefix)
        return tokenize_packed(tokenizer, texts, cfg, out_prefix, sep_id=tokenizer.sep_token_id,
                               cls_id=tokenizer.cls_token_id, with_words=True)

    def training(self, tokenizer, cfg):
        from components.train.pretraining import MaskedLMTraining

        return MaskedLMTraining(tokenizer, cfg.mlm_probability, cfg.whole_word_masking, self.next_sentence)

    def summary_line(self, metrics):
        text = f"MLM acc {metrics['val_mlm_accuracy']:.3f}"
        if "val_mlm_baseline_accuracy" in metrics:
            baseline = metrics["val_mlm_baseline_accuracy"]
            ratio = f"{metrics['val_mlm_accuracy'] / baseline:.2f}x" if baseline else "n/a"
            text += (f" (most-frequent token {baseline:.3f}: {ratio}), MLM loss {metrics['val_mlm_loss']:.2f} "
                     f"(unigram {metrics['val_mlm_unigram_loss']:.2f})")
        if self.next_sentence:
            text += f", NSP acc {metrics['val_nsp_accuracy']:.3f}"
            if "val_nsp_baseline_accuracy" in metrics:
                text += f" (majority class {metrics['val_nsp_baseline_accuracy']:.3f})"
        return text

    MOST_FREQUENT_RATIO = 1.2
    """Did not train: masked-token accuracy < this multiple of always guessing the most frequent
    token at the same positions. With NSP, the MLM accuracy decides (the NSP head alone can
    learn one-sentence chunks without learning language)."""

    def at_baseline(self, metrics):
        return mlm_at_baseline(metrics, self.MOST_FREQUENT_RATIO, "MLM")

    def samples(self, model_dir):
        from components.evaluate.report import fill_mask_samples

        return fill_mask_samples(model_dir)


@dataclass(frozen=True)
class ReplacedTokenDetection(Objective):
    """ELECTRA's replaced-token detection (components/train/rtd.py): a generator a fraction
    of the width fills masked positions with its samples; the discriminator, saved as a
    standard BERT token classifier, labels every real token original or replaced. Same
    tokenizer, packed data, encoder and scratch twin as mlm, so the two differ in objective
    only; with `pretrain.rtd_equal_flops` it trains for mlm's FLOPs (generator included)."""

    def tokenize_split(self, tokenizer, texts, cfg, seed, out_prefix):
        from components.tokens.tokenization import tokenize_packed

        return tokenize_packed(tokenizer, texts, cfg, out_prefix, sep_id=tokenizer.sep_token_id,
                               cls_id=tokenizer.cls_token_id, with_words=True)

    def build_model(self, cfg, tokenizer, train_cfg=None):
        from components.config import PretrainConfig
        from components.train.rtd import build_replaced_token_model

        train_cfg = train_cfg or PretrainConfig()
        config = self.architecture.model_config(cfg, tokenizer, attn_implementation="sdpa")
        return build_replaced_token_model(config, train_cfg.rtd_generator_width,
                                          train_cfg.rtd_disentangled_embeddings)

    def saved_model(self, model):
        return model.saved_discriminator()

    def masked_fraction(self, train_cfg):
        return train_cfg.rtd_mask_probability

    def max_steps(self, cfg, tokenizer, train_cfg, block_size, real_fraction):
        """pretrain.max_steps, or with pretrain.rtd_equal_flops the most steps whose training
        FLOPs (components/train/flops.py; generator and discriminator) do not exceed the
        rival's at pretrain.max_steps (the same rows per step)."""
        if not (train_cfg.rtd_equal_flops and self.rival):
            return train_cfg.max_steps
        from components.train.flops import flops_per_token

        rival = OBJECTIVES[self.rival]
        ours = flops_per_token(self.build_model(cfg, tokenizer, train_cfg), block_size,
                               self.masked_fraction(train_cfg), real_fraction)
        theirs = flops_per_token(rival.build_model(cfg, tokenizer, train_cfg), block_size,
                                 rival.masked_fraction(train_cfg), real_fraction)
        return max(1, int(train_cfg.max_steps * theirs / ours))

    def training(self, tokenizer, cfg):
        from components.train.rtd import ReplacedTokenTraining

        return ReplacedTokenTraining(tokenizer, cfg.rtd_mask_probability, cfg.rtd_discriminator_weight,
                                     cfg.rtd_uniform_start, cfg.rtd_uniform_end)

    def summary_line(self, metrics):
        text = f"RTD acc {metrics['val_rtd_accuracy']:.3f}"
        if "val_rtd_baseline_accuracy" in metrics:
            text += (f" (unreplaced share {metrics['val_rtd_baseline_accuracy']:.3f}), replaced found "
                     f"{metrics['val_rtd_replaced_recall']:.3f}")
        if "val_rtd_uniform_recall" in metrics:
            text += (f" (uniform share {metrics['val_rtd_uniform_share']:g}: found {metrics['val_rtd_uniform_recall']:.3f}"
                     f" of uniform, {metrics['val_rtd_generator_recall']:.3f} of the generator's)")
        text += f", generator MLM acc {metrics['val_mlm_accuracy']:.3f}"
        if "val_mlm_baseline_accuracy" in metrics:
            text += (f" (most-frequent token {metrics['val_mlm_baseline_accuracy']:.3f}), MLM loss "
                     f"{metrics['val_mlm_loss']:.2f} (unigram {metrics['val_mlm_unigram_loss']:.2f})")
        return text

    PRIOR_MARGIN = 0.01
    """Did not train: discriminator accuracy within this of the unreplaced share (what "nothing
    was replaced" scores: the prior)."""

    def at_baseline(self, metrics):
        if "val_rtd_baseline_accuracy" not in metrics:
            return None
        accuracy, prior = metrics["val_rtd_accuracy"], metrics["val_rtd_baseline_accuracy"]
        if abs(accuracy - prior) > self.PRIOR_MARGIN:
            return None
        return (f"RTD acc {accuracy:.3f} within {self.PRIOR_MARGIN:g} of the unreplaced share {prior:.3f} "
                f"(its prior)")

    def samples(self, model_dir):
        from components.evaluate.report import replaced_token_samples

        return replaced_token_samples(model_dir)


def mlm_at_baseline(metrics: dict, ratio: float, what: str) -> str | None:
    """Masked-token accuracy below `ratio` x the most-frequent-token accuracy: why, or None."""
    if "val_mlm_baseline_accuracy" not in metrics:
        return None
    accuracy, baseline = metrics["val_mlm_accuracy"], metrics["val_mlm_baseline_accuracy"]
    if accuracy >= ratio * baseline:
        return None
    return f"{what} acc {accuracy:.3f} < {ratio:g}x the most-frequent token's {baseline:.3f}"


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuned classifier: from an objective's pretrained model, or from scratch."""

    name: str
    architecture: Architecture
    objective: Objective | None
    """None for the scratch baseline."""

    @property
    def pretrained(self) -> bool:
        return self.objective is not None

    @property
    def stage(self) -> str:
        """Its dvc.yaml stage: finetune@<objective>, or finetune_scratch@<architecture>."""
        return f"finetune@{self.name}" if self.objective else f"finetune_scratch@{self.architecture.name}"

    @property
    def report_objective(self) -> str:
        """The `objective` column of the comparison report."""
        return self.objective.name if self.objective else "scratch"

    @property
    def description(self) -> str:
        return self.objective.description if self.objective else self.architecture.scratch_description

    def pretrained_dir(self) -> Path | None:
        return Path(paths.pretrained_dir(self.objective.name)) if self.objective else None

    def tokenizer_dir(self) -> Path:
        """Where its tokenizer is read from: the pretrained model's, or the architecture's."""
        return self.pretrained_dir() or Path(paths.tokenizer_dir(self.architecture.name))


GPT2 = GPT2Architecture(
    name="gpt2", tokenizer_kind="byte-level BPE",
    specials={"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"},
    required_specials=("eos_token", "pad_token"), pad_if_missing="<|pad|>",
    classifier_class="GPT2ForSequenceClassification", classifier_head=("score",),
    scratch_description="none: a randomly initialised GPT-2 classifier (the baseline for clm)",
)
BERT = BertArchitecture(
    name="bert", tokenizer_kind="WordPiece",
    specials={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
              "mask_token": "[MASK]"},
    required_specials=("cls_token", "sep_token", "mask_token", "pad_token"), pad_if_missing=None,
    classifier_class="BertForSequenceClassification", classifier_head=("bert.pooler", "classifier"),
    scratch_description="none: a randomly initialised BERT classifier (the baseline for mlm, mlm_nsp and rtd)",
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (GPT2, BERT)}

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    CausalLM(
        name="clm", architecture=GPT2, model_class="GPT2LMHeadModel", registry_task="text-generation",
        description="causal language modelling (GPT-2 style: predict the next token)",
        report_metrics=("val_loss", "val_perplexity", "val_unigram_perplexity"),
        baselines={"val_perplexity": "val_unigram_perplexity"},
    ),
    MaskedLM(
        name="mlm", architecture=BERT, model_class="BertForMaskedLM", registry_task="fill-mask",
        description="masked language modelling (BERT style: pretrain.mlm_probability of tokens, 80/10/10)",
        report_metrics=("val_loss", "val_mlm_accuracy", "val_mlm_baseline_accuracy", "val_mlm_loss",
                        "val_mlm_unigram_loss"),
        baselines={"val_mlm_accuracy": "val_mlm_baseline_accuracy", "val_mlm_loss": "val_mlm_unigram_loss"},
    ),
    MaskedLM(
        name="mlm_nsp", architecture=BERT, model_class="BertForPreTraining", registry_task="fill-mask",
        description="masked language modelling plus next-sentence prediction (BERT's original recipe)",
        report_metrics=("val_loss", "val_mlm_accuracy", "val_mlm_baseline_accuracy", "val_mlm_loss",
                        "val_mlm_unigram_loss", "val_nsp_accuracy", "val_nsp_baseline_accuracy"),
        baselines={"val_mlm_accuracy": "val_mlm_baseline_accuracy", "val_mlm_loss": "val_mlm_unigram_loss",
                   "val_nsp_accuracy": "val_nsp_baseline_accuracy"},
        next_sentence=True,
    ),
    ReplacedTokenDetection(
        name="rtd", architecture=BERT, model_class="BertForTokenClassification",
        registry_task="token-classification",
        description="replaced-token detection (ELECTRA: a small generator fills masked positions, the "
                    "discriminator labels every token original or replaced)",
        report_metrics=("val_loss", "val_rtd_accuracy", "val_rtd_baseline_accuracy", "val_rtd_replaced_recall",
                        "val_rtd_loss", "val_mlm_accuracy", "val_mlm_baseline_accuracy", "val_mlm_loss",
                        "val_mlm_unigram_loss"),
        baselines={"val_rtd_accuracy": "val_rtd_baseline_accuracy", "val_mlm_accuracy": "val_mlm_baseline_accuracy",
                   "val_mlm_loss": "val_mlm_unigram_loss"},
        rival="mlm",
    ),
)}

# Every objective's classifier, then every architecture's scratch twin (the order of the report).
FINETUNE_RUNS: dict[str, FinetuneRun] = {r.name: r for r in (
    *(FinetuneRun(o.name, o.architecture, o) for o in OBJECTIVES.values()),
    *(FinetuneRun(a.scratch_run, a, None) for a in ARCHITECTURES.values()),
)}

OBJECTIVE_NAMES = tuple(OBJECTIVES)
ARCHITECTURE_NAMES = tuple(ARCHITECTURES)
FINETUNE_RUN_NAMES = tuple(FINETUNE_RUNS)
SCRATCH_RUN_NAMES = tuple(a.scratch_run for a in ARCHITECTURES.values())


def check_objectives(names) -> tuple[str, ...]:
    """params.yaml `objectives` checked against the specs: the names, or a one-line ConfigError
    naming the valid ones (components.params checks it is a non-empty list of strings)."""
    from components.params import ConfigError

    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"params.yaml: 'objectives': unknown objective {unknown[0]!r}; valid: "
                          f"{', '.join(OBJECTIVE_NAMES)}")
    return tuple(names)


def finetune_runs(objectives) -> list[FinetuneRun]:
    """The fine-tuning runs a list of objectives compares, in report order: each objective's
    classifier, then the scratch twin of every architecture in use."""
    names = check_objectives(objectives)
    used = {OBJECTIVES[n].architecture.name for n in names}
    return [r for r in FINETUNE_RUNS.values()
            if (r.objective.name in names if r.objective else r.architecture.name in used)]
