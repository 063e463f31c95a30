"""Every params.yaml section as a typed, documented, checked dataclass: the one home of each default.

The defaults are the ``demo`` profile; ``components/params.py`` holds what the other profiles
change and turns ``params.yaml`` into these configs. A check that needs one section lives in
that section's ``__post_init__`` (a ``ValueError`` naming the key); limits across sections
live in ``components/params.py``. Nothing heavy is imported here (no torch, transformers,
pandas), so every stage can check every section in milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

BUILTIN_CORPUS = "builtin:stdlib-docs"
PYTHON_DOCS = "builtin:python-docs"
BOTH_CORPORA = "builtin:stdlib-docs+python-docs"
# The built-in corpora data.source may name (components/data/stdlib_docs.py, python_docs.py).
BUILTIN_CORPORA = (BUILTIN_CORPUS, PYTHON_DOCS, BOTH_CORPORA)
BUILTIN_TASK = "builtin:stdlib-chapters"
# Its classes (components/data/stdlib_docs.py LABELS; tests/data/test_corpus.py checks they agree):
# config sits below data, so it may not import them.
BUILTIN_TASK_CLASSES = 9
HF_PREFIX = "hf:"
TXT_MODES = ("file", "paragraph")
DTYPES = ("auto", "float32", "bfloat16")
SCHEDULES = ("cosine", "one_cycle", "trapezoid")


def builtin_corpora(source: str) -> tuple[str, ...]:
    """The built-in corpora a data.source names, in reading order: ``builtin:stdlib-docs+python-docs``
    -> ("stdlib-docs", "python-docs"); () for a path or a hub dataset."""
    return tuple(source.removeprefix("builtin:").split("+")) if source in BUILTIN_CORPORA else ()


def _section(config) -> str:
    """params.yaml section of a config instance: PretrainConfig -> "pretrain"."""
    return type(config).__name__.removesuffix("Config").lower()


def at_least(config, minimum: int, *names: str, why: str = "") -> None:
    """Each named field must be >= `minimum`: a one-line error naming section.field otherwise."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{_section(config)}.{name} must be >= {minimum}{why}, got {value}")


def within(config, name: str, interval: str) -> None:
    """The field lies in `interval`, written as in the error message: "[0, 1)", "(0.5, 1)"."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    value = getattr(config, name)
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{_section(config)}.{name} must be in {interval}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """params.yaml section ``data``: where the pretraining corpus comes from."""

    source: str = BUILTIN_CORPUS
    """``builtin:stdlib-docs`` (the task's own text), ``builtin:python-docs`` (the installed
    packages' docstrings), ``builtin:stdlib-docs+python-docs`` (both, stdlib first); a local
    file, directory or glob of .txt, .jsonl, .json, .csv (each optionally .gz) and .parquet; a
    ``save_to_disk`` directory; or ``hf:<name>[:<config>]``."""
    text_column: str = "text"
    """Field (jsonl, json, Hugging Face) or column (csv, parquet) holding each document's text."""
    txt_mode: str = "file"
    """``file``: a .txt file is one document; ``paragraph``: each blank-line-separated block is."""
    validation_fraction: float = 0.05
    """Share of documents, chosen by hash of their text, held out for validation."""
    min_chars: int = 20
    """Documents shorter than this after cleaning are dropped."""
    max_documents: int = 0
    """Keep only the first N documents by doc_id (0 = all): a hash sample, the same whatever
    order the files are read in; keeps tiny runs fast."""
    max_characters: int = 0
    """``builtin:python-docs``: stop reading once its documents reach this many characters
    (0 = all), in its fixed order (package, then file), so a smaller corpus is a prefix of a
    larger one. Counted before cleaning and decontamination; the stdlib part is not capped."""
    decontaminate_ngram: int = 13
    """A corpus passage sharing a word n-gram this long with a downstream validation or test
    text is cut (GPT-3, lm-evaluation-harness: 13; components/data/decontaminate.py)."""
    decontaminate_min_words: int = 8
    """A held-out text shorter than `decontaminate_ngram` words is matched whole when it has at
    least this many (GPT-3's floor); a shorter one only where a whole line of the corpus is it."""

    def __post_init__(self) -> None:
        if self.decontaminate_ngram < 1:
            raise ValueError(f"data.decontaminate_ngram must be >= 1, got {self.decontaminate_ngram}")
        if not 1 <= self.decontaminate_min_words <= self.decontaminate_ngram:
            raise ValueError(f"data.decontaminate_min_words must be in [1, data.decontaminate_ngram="
                             f"{self.decontaminate_ngram}], got {self.decontaminate_min_words}")
        if self.source.startswith("builtin:") and self.source not in BUILTIN_CORPORA:
            raise ValueError(f"data.source: unknown built-in {self.source!r}; use one of "
                             f"{', '.join(BUILTIN_CORPORA)}, or a path")
        if not self.source.strip():
            raise ValueError(f"data.source must be {BUILTIN_CORPUS!r} or a path, got an empty string")
        if self.source.startswith(HF_PREFIX) and not self.source.removeprefix(HF_PREFIX).partition(":")[0]:
            raise ValueError(f"data.source: {self.source!r} names no dataset; use hf:<name>[:<config>]")
        if self.txt_mode not in TXT_MODES:
            raise ValueError(f"data.txt_mode must be one of {', '.join(TXT_MODES)}, got {self.txt_mode!r}")
        if not self.text_column:
            raise ValueError("data.text_column must name a field, got an empty string")
        if not 0 < self.validation_fraction < 0.5:
            raise ValueError(f"data.validation_fraction must be in (0, 0.5), got {self.validation_fraction}")
        if self.min_chars < 1:
            raise ValueError(f"data.min_chars must be >= 1, got {self.min_chars}")
        if self.max_documents < 0:
            raise ValueError(f"data.max_documents must be >= 0 (0 = all), got {self.max_documents}")
        if self.max_characters < 0:
            raise ValueError(f"data.max_characters must be >= 0 (0 = all), got {self.max_characters}")
        if self.max_characters and PYTHON_DOCS.removeprefix("builtin:") not in builtin_corpora(self.source):
            raise ValueError(f"data.max_characters caps {PYTHON_DOCS} only, but data.source is {self.source!r}; "
                             "set it to 0 (or use data.max_documents)")


@dataclass(frozen=True)
class DownstreamConfig:
    """params.yaml section ``downstream``: the classification task models are fine-tuned on."""

    task: str = BUILTIN_TASK
    """``builtin:stdlib-chapters`` (docstring -> library chapter), a labelled .csv / .jsonl /
    .json / .parquet file, a directory or glob of them named by split, a save_to_disk
    directory, or ``hf:<name>[:<config>]`` (components/data/downstream.py)."""
    text_column: str = "text"
    """Field holding the text (not the built-in task)."""
    label_column: str = "label"
    """Field holding the label: a string, an integer or a ClassLabel id (not the built-in task)."""
    labels: str = ""
    """The label set in order, comma-separated; empty = the dataset's ClassLabel names, else
    the training split's sorted labels. Rows with other labels are an error."""
    validation_fraction: float = 0.15
    """Share of each class held out for validation (built-in: as whole modules; a user's
    task: only where it has no validation split)."""
    test_fraction: float = 0.15
    """Share of each class held out for test (built-in: whole modules that the built-in
    corpus then leaves out; a user's task: only where it has no test split)."""
    min_chars: int = 40
    """Docstrings shorter than this are not examples (built-in task)."""
    max_examples_per_split: int = 0
    """Cap on each split's size (0 = all), subsampled so every class keeps examples."""
    train_examples: int = 0
    """The label budget: labelled training examples fine-tuning sees (0 = all), a stratified
    subsample of the training split only (nested: 100 of them are among 400). Validation and
    test are untouched. The built-in corpus keeps every training text, labelled or not, as
    unlabelled pretraining text (ULMFiT's setting: more text than labels)."""

    def __post_init__(self) -> None:
        if not self.task.strip():
            raise ValueError(f"downstream.task is empty; give {BUILTIN_TASK!r}, a labelled file or directory, "
                             "or hf:<name>[:<config>]")
        if self.task.startswith("builtin:") and self.task != BUILTIN_TASK:
            raise ValueError(f"downstream.task {self.task!r}: the only built-in task is {BUILTIN_TASK!r}; "
                             "or give a labelled file, directory or hf:<name>[:<config>]")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ValueError(f"downstream.{name} must be in (0, 0.5), got {value}")
        if self.min_chars < 1:
            raise ValueError(f"downstream.min_chars must be >= 1, got {self.min_chars}")
        if self.train_examples < 0:
            raise ValueError(f"downstream.train_examples must be >= 0 (0 = all), got {self.train_examples}")
        if self.task == BUILTIN_TASK and 0 < self.train_examples < BUILTIN_TASK_CLASSES:
            raise ValueError(f"downstream.train_examples={self.train_examples} is fewer than the task's "
                             f"{BUILTIN_TASK_CLASSES} classes; give at least {BUILTIN_TASK_CLASSES} (0 = all)")
        for name in ("text_column", "label_column"):
            if not getattr(self, name).strip():
                raise ValueError(f"downstream.{name} is empty; name the field that holds the {name[:-7]}")
        if self.text_column == self.label_column:
            raise ValueError(f"downstream.text_column and downstream.label_column are both {self.text_column!r}; "
                             "they must name different fields")
        if self.max_examples_per_split < 0:
            raise ValueError(f"downstream.max_examples_per_split must be 0 (all) or positive, "
                             f"got {self.max_examples_per_split}")
        if self.task == BUILTIN_TASK and 0 < self.max_examples_per_split < BUILTIN_TASK_CLASSES:
            raise ValueError(
                f"downstream.max_examples_per_split must be 0 (all) or >= {BUILTIN_TASK_CLASSES} "
                f"(one per class), got {self.max_examples_per_split}"
            )


@dataclass(frozen=True)
class ValidateConfig:
    """params.yaml section ``validate``: thresholds of the Great Expectations gate."""

    min_documents: int = 50
    """Fewest documents, train and validation together."""
    min_characters: int = 100_000
    """Fewest characters in the whole corpus."""
    min_doc_chars: int = 20
    """Shortest allowed document, in characters."""
    max_doc_chars: int = 1_000_000
    """Longest allowed document, in characters."""
    min_printable_share: float = 0.95
    """Per document: least share of characters that are printable or whitespace."""
    max_replacement_share: float = 0.001
    """Per document: largest share of U+FFFD replacement characters (decoding damage)."""
    max_duplicate_share: float = 0.0
    """Largest share of documents whose text already appeared (in either split)."""
    min_validation_documents: int = 1
    """Fewest documents in the validation split."""
    mostly: float = 1.0
    """GX `mostly` for the per-document checks: the share of documents that must pass each."""

    def __post_init__(self) -> None:
        for name in ("min_documents", "min_characters", "min_doc_chars", "max_doc_chars",
                     "min_validation_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"validate.{name} must be an integer >= 0, got {value!r}")
        if self.max_doc_chars < max(self.min_doc_chars, 1):
            raise ValueError(
                f"validate.max_doc_chars must be >= 1 and >= validate.min_doc_chars "
                f"({self.min_doc_chars}), got {self.max_doc_chars}"
            )
        for name in ("min_printable_share", "max_replacement_share", "max_duplicate_share", "mostly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"validate.{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class TokenizerConfig:
    """params.yaml section ``tokenizer``: one tokenizer per architecture, trained on the train split."""

    vocab_size: int = 4000
    """Target vocabulary size including special tokens (byte-level BPE and WordPiece alike)."""
    min_frequency: int = 2
    """Merges/words seen fewer times are not added to the vocabulary."""
    lowercase: bool = True
    """WordPiece (BERT) only: lower-case and strip accents, like bert-base-uncased."""
    model_max_length: int = 128
    """Saved as the tokenizer's `model_max_length`; unset in params.yaml, it follows model.max_positions."""
    pretrained_gpt2: str = ""
    """A local Hugging Face tokenizer directory to use for gpt2 (clm) instead of training one."""
    pretrained_bert: str = ""
    """A local Hugging Face tokenizer directory to use for bert (mlm, mlm_nsp) instead of training one."""

    def __post_init__(self):
        at_least(self, 300, "vocab_size", why=" (256 bytes + special tokens)")
        at_least(self, 1, "min_frequency")
        at_least(self, 8, "model_max_length")

    def pretrained(self, architecture: str) -> str:
        return {"gpt2": self.pretrained_gpt2, "bert": self.pretrained_bert}.get(architecture, "")


@dataclass(frozen=True)
class TokenizeConfig:
    """params.yaml section ``tokenize``: packing and NSP pair building."""

    block_size: int = 128
    """Tokens per training example; unset in params.yaml, it follows model.max_positions."""
    short_seq_prob: float = 0.1
    """NSP: probability of a shorter target length (BERT's recipe, so the model sees short inputs)."""
    batch_size: int = 1000
    """Documents per tokenizer call; a few calls run at once on background threads."""

    def __post_init__(self):
        at_least(self, 16, "block_size")
        within(self, "short_seq_prob", "[0, 1]")
        at_least(self, 1, "batch_size")


@dataclass(frozen=True)
class ModelConfig:
    """params.yaml section ``model``: one shape shared by GPT-2 and BERT so objectives compare fairly."""

    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    d_model: int = 256
    """Hidden width."""
    d_ff: int = 1024
    """Feed-forward width (4 x d_model in GPT-2 and BERT)."""
    max_positions: int = 128
    """Position embeddings: the pipeline's sequence length. tokenize.block_size,
    tokenizer.model_max_length and finetune.max_length follow it unless set, and may not exceed it."""
    dropout: float = 0.1
    """Dropout when fine-tuning (pretrained and scratch alike), and in the saved pretrained
    model's config; pretraining uses pretrain.dropout instead."""

    def __post_init__(self):
        at_least(self, 1, "n_layers", "n_heads", "d_model", "d_ff", "max_positions")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        within(self, "dropout", "[0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and precision fields shared by pretraining and fine-tuning."""

    lr: float = 1e-3
    """Peak learning rate after warmup."""
    schedule: str = "cosine"
    """Learning rate after warmup: ``cosine`` decays to lr * min_lr_ratio; ``one_cycle``
    decays linearly to it (Cramming's one-cycle); ``trapezoid`` (warmup-stable-decay) holds
    lr, then decays linearly over the last decay_fraction of the steps."""
    min_lr_ratio: float = 0.1
    """The schedule ends at lr * min_lr_ratio."""
    warmup_steps: int = 20
    warmup_fraction: float = 0.0
    """Warmup as a share of the steps; the warmup is the longer of this and warmup_steps."""
    decay_fraction: float = 0.2
    """trapezoid: the share of the steps, at the end, over which lr decays."""
    weight_decay: float = 0.01
    """AdamW decay on matrices only (not biases, LayerNorm or embeddings' norms)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    """AdamW's second-moment decay: 0.95 (GPT-style) reacts faster to gradient spikes, 0.98-0.999
    averages more (Cramming and RoBERTa use 0.98)."""
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    batch_size: int = 32
    grad_accum: int = 1
    """Micro-batches per optimiser step; the effective batch is batch_size * grad_accum."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    dtype: str = "auto"
    """auto | float32 | bfloat16: auto is bf16 on CUDA where supported; on CPU the faster of
    fp32 and bf16 autocast on the stage's own training step, measured once per CPU model,
    torch version and shape and cached ($LMFORGE_CACHE_DIR, default ~/.cache/lmforge)."""

    def __post_init__(self):
        section = _section(self)
        if self.lr <= 0:
            raise ValueError(f"{section}.lr must be > 0, got {self.lr}")
        within(self, "min_lr_ratio", "[0, 1]")
        at_least(self, 0, "warmup_steps")
        within(self, "warmup_fraction", "[0, 1)")
        within(self, "decay_fraction", "(0, 1]")
        within(self, "adam_beta1", "[0, 1)")
        within(self, "adam_beta2", "[0, 1)")
        if self.adam_eps <= 0:
            raise ValueError(f"{section}.adam_eps must be > 0, got {self.adam_eps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{section}.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        at_least(self, 1, "batch_size", "grad_accum")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"{section}.weight_decay and {section}.grad_clip must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"{section}.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")


@dataclass(frozen=True)
class PretrainConfig(OptimConfig):
    """params.yaml section ``pretrain``: budget and evaluation of the pretraining run."""

    # The pretraining recipe: each default below was measured on the validation split at the
    # demo shapes (docs/RECIPE.md has the runs), or is marked there as taken unmeasured.
    batch_size: int = 16
    schedule: str = "one_cycle"
    """one_cycle beat cosine at 450 steps (docs/RECIPE.md)."""
    warmup_steps: int = 0
    warmup_fraction: float = 0.1
    adam_beta2: float = 0.98
    """Cramming's 0.98; 0.95 measured the same here (docs/RECIPE.md)."""
    grad_clip: float = 0.5
    """Cramming's 0.5 (not measured here)."""
    dropout: float = 0.0
    """Dropout while pretraining (every dropout of the model). 0 as in Cramming: a budget too
    small to overfit the corpus only loses signal to it. Fine-tuning uses model.dropout,
    which is also what the saved pretrained model's config carries."""
    max_steps: int = 450
    """Optimiser steps (the budget is the same for every objective)."""
    eval_every: int = 150
    eval_batches: int = 16
    """Validation batches per evaluation (fixed masks, so numbers compare across steps)."""
    log_every: int = 15
    mlm_probability: float = 0.3
    """mlm, mlm_nsp: share of tokens chosen for prediction (80% [MASK], 10% random, 10% kept).
    30% (MosaicBERT) beat 15% in pretraining and downstream; 40% (Wettig et al.) tied with 30%
    in pretraining (docs/RECIPE.md)."""
    whole_word_masking: bool = False
    """MLM: choose whole words (the tokenizer's own word ids, stored at tokenize time), not single tokens."""
    clm_document_attention: str = "cross"
    """clm: `cross` lets a token attend to earlier documents packed into its block (GPT-2's
    choice, the fused causal kernel); `within` masks attention to its own document."""
    rtd_mask_probability: float = 0.15
    """rtd: share of tokens masked for ELECTRA's generator (all become [MASK]); ELECTRA's 15%."""
    rtd_generator_width: float = 0.25
    """rtd: the generator's hidden size as a share of the discriminator's (ELECTRA: 1/4 to 1/2;
    its Small model 1/4); same depth, heads and feed-forward scaled alike."""
    rtd_discriminator_weight: float = 50.0
    """rtd: loss = generator MLM loss + this x discriminator loss (ELECTRA's 50)."""
    rtd_uniform_start: float = 1.0
    """rtd: replacement curriculum. At step 0 this share of the masked positions is filled with a
    token drawn uniformly from the vocabulary (specials left out) instead of the generator's
    sample, annealed linearly to rtd_uniform_end at the last step; validation uses the end share.
    1 and 1 (the default): every replacement uniform, the `uniform_generator` switch of ELECTRA's
    released code; the only setting whose discriminator left its prior at the demo budget
    (docs/RECIPE.md: the generator stays at the most-frequent-token level for 455 steps, and
    its samples are as hard to spot as the originals). 0 and 0: ELECTRA's paper, generator
    samples only (did not train at the demo budget)."""
    rtd_uniform_end: float = 1.0
    """rtd: the uniform share at the last step (see rtd_uniform_start)."""
    rtd_disentangled_embeddings: bool = False
    """rtd: DeBERTaV3's gradient-disentangled embedding sharing: the discriminator's token
    embeddings are the generator's, outside its gradient, plus a delta of its own (zero at
    start); the saved discriminator holds their sum in a standard embedding layer. false:
    ELECTRA's plain sharing, both losses move one table."""
    rtd_equal_flops: bool = True
    """rtd: cut its max_steps so its training FLOPs, generator included, do not exceed mlm's at
    max_steps (evaluate then compares rtd with mlm at equal compute); false: max_steps as given."""
    checkpoint_every: int = 150
    """Steps between checkpoints (and one at the end); a rerun resumes from the newest."""
    keep_checkpoints: int = 2
    nproc_per_node: int = 1
    """Processes for DDP: > 1 relaunches the stage under torchrun (gloo on CPU, NCCL on GPUs)."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs for long runs; compile time dominates short ones)."""

    def __post_init__(self):
        super().__post_init__()
        at_least(self, 1, "max_steps", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                 "keep_checkpoints", "nproc_per_node")
        within(self, "mlm_probability", "(0, 1)")
        within(self, "rtd_mask_probability", "(0, 1)")
        within(self, "rtd_generator_width", "(0, 1]")
        within(self, "rtd_uniform_start", "[0, 1]")
        within(self, "rtd_uniform_end", "[0, 1]")
        if self.rtd_discriminator_weight <= 0:
            raise ValueError(f"pretrain.rtd_discriminator_weight must be > 0, got {self.rtd_discriminator_weight}")
        within(self, "dropout", "[0, 1)")
        if self.clm_document_attention not in ("cross", "within"):
            raise ValueError(f"pretrain.clm_document_attention must be cross or within, "
                             f"got {self.clm_document_attention!r}")


@dataclass(frozen=True)
class FinetuneConfig(OptimConfig):
    """params.yaml section ``finetune``: the same search, budget and seeds for every pretrained model and scratch."""

    lr: float = 5e-4
    """The learning rate only when `lr_grid` is empty (a grid of one)."""
    lr_grid: str = "5e-4,1e-3"
    """Learning rates tried, comma-separated (a string: `dvc exp run -S` cannot address list
    items). Every run, pretrained or scratch, tries the same grid with its first seed and
    keeps the lr with the best validation macro-F1; the test split is never read."""
    seeds: int = 3
    """Fine-tuning seeds per run: `seed`, `seed + 1`, ... (the same values for every run). The
    grid runs with the first; the others run at the chosen lr. Evaluate pairs runs by seed."""
    epochs: int = 3
    """The cap in passes over the labelled examples; `max_steps`, when set, caps too."""
    max_steps: int = 0
    """The cap in optimizer steps (0 = `epochs` alone): with a label budget, `epochs` over 100
    examples is a handful of steps, over all of them hundreds; the run stops at the smaller
    cap, or earlier by `patience`. The same rule for every run, pretrained or scratch."""
    eval_every: int = 0
    """Steps between validation evaluations (0 = once an epoch); `patience` counts them."""
    max_length: int = 128
    """Tokens per example after truncation; unset in params.yaml, it follows model.max_positions
    (the demo profile sets 48: most docstrings fit, and fine-tuning runs faster)."""
    patience: int = 2
    """Early stopping: evaluations (every `eval_every` steps, or epochs) without a better
    validation macro-F1 before stopping; the best evaluation's weights are kept."""
    class_weighting: bool = True
    """Weight the loss by inverse class frequency (the built-in task is imbalanced)."""
    group_by_length: bool = True
    """Batches of similar length (as transformers' Trainer `group_by_length`): each epoch's
    shuffled examples are sorted by length within windows of 50 batches, and the batches
    shuffled, so little of a batch is padding (about 1/3 of the demo's random batches was)."""
    fast_cpu_dropout: bool = True
    """On the CPU, run the classifier's dropout with a cheaper mask (components/train/models.py
    `fast_cpu_dropout`): torch's float Bernoulli was a tenth of a fine-tuning step. Another
    random stream than torch's, so results differ from torch dropout's as another set of seeds
    would (benchmarks/README.md, issue 26); false gives torch's dropout back."""
    unpad: bool = True
    """Train on the real tokens only (components/train/unpad.py, MosaicBERT's unpadding): the
    same model and logits as the padded forward, without the work on padding (15% of the
    demo's fine-tuning positions). Another dropout stream than the padded forward's (its masks
    cover fewer elements); false runs the padded forward."""

    def __post_init__(self):
        super().__post_init__()
        at_least(self, 1, "epochs", "max_length", "patience", "seeds")
        at_least(self, 0, "max_steps", "eval_every")
        self.learning_rates  # a bad grid fails here, with the params check

    @property
    def learning_rates(self) -> tuple[float, ...]:
        """`lr_grid` parsed, in the order written (the first wins a tie); `(lr,)` when it is empty."""
        if not self.lr_grid.strip():
            return (self.lr,)
        rates = []
        for item in self.lr_grid.split(","):
            try:
                rate = float(item)
            except ValueError:
                raise ValueError(f"finetune.lr_grid: {item.strip()!r} is not a number; write learning rates "
                                 f"separated by commas, e.g. \"5e-4,1e-3\"") from None
            if not rate > 0 or rate != rate or rate == float("inf"):
                raise ValueError(f"finetune.lr_grid: every learning rate must be > 0, got {item.strip()!r}")
            rates.append(rate)
        if len(set(rates)) != len(rates):
            raise ValueError(f"finetune.lr_grid: {self.lr_grid!r} repeats a learning rate; list each once")
        return tuple(rates)


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml section ``evaluate``: test-split evaluation and the comparison report."""

    bootstrap_samples: int = 1000
    """Paired bootstrap resamples of the test set for the CI on the difference to scratch."""
    confidence: float = 0.95
    batch_size: int = 64

    def __post_init__(self):
        at_least(self, 100, "bootstrap_samples")
        within(self, "confidence", "(0.5, 1)")
        at_least(self, 1, "batch_size")


@dataclass(frozen=True)
class RegisterConfig:
    """params.yaml section ``register``: names and the promotion gate."""

    model_prefix: str = "lmforge"
    """Classifiers are `<prefix>-<run>` (`lmforge-mlm`, `lmforge-scratch-bert`), pretrained bases
    `<prefix>-<objective>-base`."""
    gate_metric: str = "test_macro_f1"
    """Higher is better; compared with the current champion's on the same test split. For a base,
    the metric of the classifier fine-tuned from it."""
    min_improvement: float = 0.0
    """A challenger is promoted only when the lower bound of the paired-bootstrap CI of
    (challenger - champion) on the gate metric, over one test split, exceeds this."""
    confidence: float = 0.95
    """Of that CI."""
    bootstrap_samples: int = 1000
    """Paired resamples of the test split for that CI."""

    def __post_init__(self):
        if not self.model_prefix or not all(c.isalnum() or c in "-_." for c in self.model_prefix):
            raise ValueError(f"register.model_prefix must be letters, digits, '-', '_' or '.', got {self.model_prefix!r}")
        if self.gate_metric not in ("test_macro_f1", "test_accuracy"):
            raise ValueError(f"register.gate_metric must be test_macro_f1 or test_accuracy, got {self.gate_metric!r}")
        if self.min_improvement < 0:
            raise ValueError(f"register.min_improvement must be >= 0, got {self.min_improvement}")
        within(self, "confidence", "(0.5, 1)")
        at_least(self, 100, "bootstrap_samples")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "downstream": DownstreamConfig,
    "validate": ValidateConfig,
    "tokenizer": TokenizerConfig,
    "tokenize": TokenizeConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "register": RegisterConfig,
}
"""params.yaml section -> its config class, in pipeline order."""
