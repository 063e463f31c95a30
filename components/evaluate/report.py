"""The comparison report's pictures and samples: what a person looks at first."""
from __future__ import annotations

from pathlib import Path

import torch

GENERATION_PROMPTS = ("Return the number of", "This module provides", "Raise an exception if the")
FILL_MASK_PROMPTS = (
    "Return a new [MASK] containing all items from the iterable.",
    "This module provides functions for working with [MASK] paths.",
    "Raise an [MASK] if the file does not exist.",
)

BASELINES_NOTE = (
    "Each pretraining metric (validation split) stands beside its trivial baseline on the same targets: "
    "always guessing the most frequent training token (at the same masked positions), a unigram model of "
    "the training tokens (add-one smoothing) and, for NSP, always guessing the majority class of the "
    "validation pairs (not 0.5: one-sentence chunks are always NotNext, as in BERT; 0.5 is the balanced "
    "ideal). A model at its baseline has learned nothing from context.")


def _save(fig, out: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = out.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)  # atomic: DVC never sees half a PNG
    plt.close(fig)


def plot_budget_curve(points: list[dict], out: Path, by_labels: bool = False) -> None:
    """`lmforge sweep`'s picture: delta macro-F1 against scratch (bars: its corrected CI)
    against the pretraining tokens seen (or, `by_labels`, the labelled examples fine-tuning
    saw: the label-efficiency curve), one line per objective."""
    x_key = "train_examples" if by_labels else "tokens_seen"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for objective in sorted({p["objective"] for p in points}):
        mine = [p for p in points if p["objective"] == objective]
        ax.errorbar([p[x_key] for p in mine], [p["delta"] for p in mine], marker="o", capsize=3,
                    yerr=[[p["delta"] - p["ci_low"] for p in mine], [p["ci_high"] - p["delta"] for p in mine]],
                    label=objective)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples" if by_labels else "pretraining tokens seen")
    ax.set_ylabel("delta test macro-F1 vs scratch (corrected CI)")
    ax.set_title("What pretraining buys, by label budget" if by_labels else "What pretraining buys, by budget")
    ax.legend()
    _save(fig, out)


def plot_macro_f1(runs: list[dict], out: Path) -> None:
    """Test macro-F1 per run, the mean over fine-tuning seeds (dots: each seed); pretrained bars
    carry the corrected bootstrap CI of their gain over scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = [r["objective"] if r["pretrained"] else f"scratch ({r['architecture']})" for r in runs]
    scores = [r["test_macro_f1_seed_mean"] for r in runs]
    # Error bar = the CI of (pretrained - scratch), drawn around the pretrained mean.
    low = [r["delta_macro_f1_vs_scratch"] - r["delta_ci_low"] if r["pretrained"] else 0 for r in runs]
    high = [r["delta_ci_high"] - r["delta_macro_f1_vs_scratch"] if r["pretrained"] else 0 for r in runs]
    ax.bar(names, scores, yerr=[low, high], capsize=4,
           color=["tab:blue" if r["pretrained"] else "tab:gray" for r in runs])
    for x, r in enumerate(runs):
        ax.plot([x] * len(r["per_seed"]), [p["test_macro_f1"] for p in r["per_seed"]], "k.", ms=4)
        if not r["pretrained"]:
            ax.axhline(r["test_macro_f1_seed_mean"], color="tab:gray", lw=0.8, ls="--")
    ax.set_ylabel("test macro-F1 (mean over seeds)")
    ax.set_title("Downstream macro-F1 by pretraining objective (dots: seeds; bars: Holm-corrected CI of the gain "
                 "over scratch)")
    ax.title.set_fontsize(9)
    _save(fig, out)


def plot_loss_curves(curves: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Pretraining loss by objective (MLM+NSP adds the NSP loss)")
    ax.legend()
    _save(fig, out)


def read_curve(csv_path: Path) -> list[tuple[int, float]]:
    lines = Path(csv_path).read_text().splitlines()[1:]
    return [(int(s), float(v)) for s, v in (line.split(",") for line in lines if line)]


def _load(model_dir: Path, auto_class):
    """Tokenizer and model (in eval mode) saved side by side by the pretrain stage."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)), auto_class.from_pretrained(str(model_dir)).eval()


@torch.no_grad()
def generation_samples(model_dir: Path, max_new_tokens: int = 20) -> list[dict]:
    """Greedy continuations of fixed prompts from a CLM model (deterministic)."""
    from transformers import AutoModelForCausalLM

    tok, model = _load(model_dir, AutoModelForCausalLM)
    samples = []
    for prompt in GENERATION_PROMPTS:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        samples.append({"prompt": prompt, "completion": tok.decode(out[0, ids["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)})
    return samples


@torch.no_grad()
def fill_mask_samples(model_dir: Path, top_k: int = 3) -> list[dict]:
    """Top-k fillers for one [MASK] in fixed sentences, from an MLM (or MLM+NSP) model."""
    from transformers import AutoModelForMaskedLM

    tok, model = _load(model_dir, AutoModelForMaskedLM)
    samples = []
    for sentence in FILL_MASK_PROMPTS:
        enc = tok(sentence.replace("[MASK]", tok.mask_token), return_tensors="pt")
        position = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0]
        logits = model(**enc).logits[0, position]
        top = torch.topk(logits, top_k)
        samples.append({"text": sentence, "fills": [tok.decode([int(i)]).strip() for i in top.indices],
                        "probabilities": [round(float(p), 4) for p in torch.softmax(logits, -1)[top.indices]]})
    return samples


# Fixed sentences with one word swapped for another (the second of each pair): the
# replaced-token detector should flag the swapped word and leave the others.
REPLACED_TOKEN_PROMPTS = (
    ("Return a new list containing all items from the iterable.", "Return a new list containing all items from the socket."),
    ("Raise a ValueError if the argument is not a string.", "Raise a ValueError if the argument is not a thread."),
)


@torch.no_grad()
def replaced_token_samples(model_dir: Path) -> list[dict]:
    """Which tokens a replaced-token detector (rtd) flags as replaced, with its probability, in
    fixed sentences where one word was swapped."""
    from transformers import AutoModelForTokenClassification

    tok, model = _load(model_dir, AutoModelForTokenClassification)
    samples = []
    for original, corrupted in REPLACED_TOKEN_PROMPTS:
        enc = tok(corrupted, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits[0].float(), -1)[:, 1]
        tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
        flagged = [(t, round(float(p), 4)) for t, p in zip(tokens, probs) if t not in tok.all_special_tokens]
        swapped = [w for w, o in zip(corrupted.split(), original.split()) if w != o]
        top = max(flagged, key=lambda tp: tp[1])
        samples.append({"text": corrupted, "swapped": swapped, "most_suspect": top[0], "most_suspect_probability": top[1],
                        "replaced_probability": [list(tp) for tp in flagged]})
    return samples


def samples_markdown(samples: dict[str, list[dict]]) -> str:
    lines = ["## What the pretrained models say", ""]
    for objective, items in samples.items():
        lines.append(f"**{objective}**")
        lines.append("")
        for item in items:
            if "prompt" in item:
                lines.append(f"- _{item['prompt']}_ → {item['completion']!r}")
            elif "swapped" in item:
                lines.append(f"- {item['text']} (swapped: {', '.join(item['swapped'])}) → most suspect "
                             f"`{item['most_suspect']}` ({item['most_suspect_probability']:.2f} replaced)")
            else:
                fills = ", ".join(f"`{f}` ({p:.2f})" for f, p in zip(item["fills"], item["probabilities"]))
                lines.append(f"- {item['text']} → {fills}")
        lines.append("")
    return "\n".join(lines)
