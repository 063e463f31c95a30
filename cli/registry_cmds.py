"""`lmforge promote | rollback | predict | lineage`: the model registry from the command line.

A model is named `<name>@<alias>` (`lmforge-mlm@champion`), `<name>/<version>` (`lmforge-mlm/3`),
either with a `models:/` prefix, or `<name>` alone for its champion.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from components.registry import tracking
from components.registry.lineage import version_chain
from components.registry.models import CHAMPION, RegistryError, load_version, promote, registered_version, rollback

MASK_SPELLINGS = ("[MASK]", "<mask>")


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'models:/a@champion' -> ('a', 'champion', None); 'a/3' -> ('a', None, '3'); 'a' -> ('a', 'champion', None)."""
    body = ref.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        if not name or not alias:
            raise RegistryError(f"{ref}: expected <model>@<alias>, e.g. lmforge-mlm@champion")
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        if not name or not version.isdigit():
            raise RegistryError(f"{ref}: expected <model>/<version number>, e.g. lmforge-mlm/3")
        return name, None, version
    if not body:
        raise RegistryError("empty model name; expected e.g. lmforge-mlm@champion")
    return body, CHAMPION, None


def resolve_version(client, ref: str):
    name, alias, version = parse_model_ref(ref)
    return registered_version(client, name, version, alias)


def load_pipeline(client, ref: str):
    """(version, task, transformers pipeline) for a registry reference, after the custom-code check."""
    from transformers.utils import logging as hf_logging

    version = resolve_version(client, ref)
    hf_logging.set_verbosity_error()  # no per-load progress bars or device notes around the answer
    hf_logging.disable_progress_bar()
    pipe = load_version(version)
    return version, pipe.task, pipe


def predict(pipe, task: str, texts: list[str], max_new_tokens: int, top_k: int) -> list:
    """Generate, fill masks or classify, according to the model's task."""
    if task == "text-classification":
        return [{"text": t, **p} for t, p in zip(texts, pipe(texts))]
    if task == "fill-mask":
        mask = pipe.tokenizer.mask_token
        out = []
        for text in texts:
            for spelling in MASK_SPELLINGS:
                text = text.replace(spelling, mask)
            if mask not in text:
                raise RegistryError(f"fill-mask: {text!r} has no {mask}; put {mask} where a word should be filled")
            found = pipe(text, top_k=top_k)
            # One mask gives a list of candidates; several give a list per mask: report the first.
            found = found[0] if found and isinstance(found[0], list) else found
            out.append({"text": text, "fills": [{"token": f["token_str"], "score": f["score"],
                                                 "sequence": f["sequence"]} for f in found]})
        return out
    if task == "text-generation":
        return [{"text": t, "generated": pipe(t, max_new_tokens=max_new_tokens, do_sample=False)[0]["generated_text"]}
                for t in texts]
    if task == "token-classification":  # rtd: each token's probability of having been replaced
        return [{"text": t, "tokens": [{"token": f["word"], "replaced": _replaced(f)} for f in pipe(t, ignore_labels=[])]}
                for t in texts]
    raise RegistryError(f"task {task!r} is not one lmforge predicts (text-classification, fill-mask, "
                        f"text-generation, token-classification)")


def _replaced(found: dict) -> float:
    """The probability of "replaced" from a token-classification pipeline's top label and score."""
    return float(found["score"]) if found["entity"] == "replaced" else 1.0 - float(found["score"])


def version_lineage(client, version) -> dict:
    """The chain model version -> runs -> params -> tokenizer -> tokenized data -> corpus -> commit."""
    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except Exception:  # the run was deleted: the version's own tags still hold the lineage
        run = None
    return version_chain(version, run)


def format_lineage(ref: str, chain: dict) -> str:
    from components import paths

    lines = [f"{ref} -> {chain['model']} v{chain['version']} ({chain['task']}; aliases: "
             f"{', '.join(chain['aliases']) or 'none'})",
             f"  promotion    {chain['promotion'] or '-'}",
             f"  run          {chain['run']['id']} ({chain['run']['name']})"]
    if chain["finetune_run"]["id"]:
        lines.append(f"  finetune run {chain['finetune_run']['id']} (matched by {chain['finetune_run']['matched_by']})")
    if chain["pretrain_run"]["id"]:
        lines.append(f"  pretrain run {chain['pretrain_run']['id']} (matched by {chain['pretrain_run']['matched_by']})")
    lines += [
        "  metrics      " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(chain["metrics"].items())),
        f"  params       sha256 {chain['params']['sha256']} (params.yaml in the model's artifacts)",
        f"  tokenizer    md5 {chain['tokenizer']['md5']}",
        f"  tokenized    md5 {chain['tokenized']['md5']}",
        f"  corpus       md5 {chain['corpus']['md5']} ({paths.CORPUS_DIR}, source {chain['corpus']['source']}, "
        f"python-docs manifest {chain['corpus'].get('manifest_sha256', 'n/a')})",
        f"  validation   success {chain['validation']['success']} "
        f"({chain['validation']['expectations']} expectations, md5 {chain['validation']['md5']})",
        f"  test split   sha256 {chain['test_split_sha256']}",
        "  environment  " + ", ".join(f"{k} {v}" for k, v in chain["environment"].items() if k != "requirements_lock_sha256")
        + f" (requirements.lock sha256 {chain['environment']['requirements_lock_sha256'][:16]})",
        f"  git commit   {chain['git']['commit']}{' (dirty tree)' if chain['git']['dirty'] else ''}",
        f"  restore      {chain['restore']}",
    ]
    if not chain["git"]["dvc_lock_committed"]:
        lines.append("  note         that commit's dvc.lock does not record these hashes: download this model's "
                     "dvc.lock (mlflow artifacts download) into the checkout before `dvc checkout`")
    return "\n".join(lines)


def _use_repo_store(repo: str) -> None:
    """Every MLflow call below (and in components) reads the store of `--repo`."""
    tracking.mlflow_defaults()
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(Path(repo)))


def _client():
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient()


def _fail(e: Exception) -> int:
    if os.environ.get("LMFORGE_DEBUG"):
        raise e
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 1


def cmd_promote(args) -> int:
    return _move_champion(args, lambda: promote(args.model, args.version, args.reason))


def cmd_rollback(args) -> int:
    return _move_champion(args, lambda: rollback(args.model, args.reason))


def _move_champion(args, change) -> int:
    _use_repo_store(args.repo)
    try:
        result = change()
    except RegistryError as e:
        return _fail(e)
    print(result["message"])
    return 0


def cmd_predict(args) -> int:
    _use_repo_store(args.repo)
    try:
        version, task, pipe = load_pipeline(_client(), args.model)
        results = predict(pipe, task, args.texts, args.max_new_tokens, args.top_k)
    except RegistryError as e:
        return _fail(e)
    if args.json:
        print(json.dumps({"model": version.name, "version": int(version.version), "task": task,
                          "predictions": results}, indent=2))
        return 0
    print(f"{version.name} v{version.version} ({task})", file=sys.stderr)
    for r in results:
        if task == "text-classification":
            print(f"{r['label']}\t{r['score']:.3f}\t{r['text']}")
        elif task == "fill-mask":
            print(r["text"])
            for f in r["fills"]:
                print(f"  {f['token']}\t{f['score']:.3f}\t{f['sequence']}")
        elif task == "token-classification":
            print(r["text"])
            print("  " + " ".join(f"{t['token']}({t['replaced']:.2f})" for t in r["tokens"]))
        else:
            print(r["generated"])
    return 0


def cmd_lineage(args) -> int:
    _use_repo_store(args.repo)
    try:
        client = _client()
        chain = version_lineage(client, resolve_version(client, args.model))
    except RegistryError as e:
        return _fail(e)
    print(json.dumps(chain, indent=2) if args.json else format_lineage(args.model, chain))
    return 0


def add_registry_commands(sub) -> None:
    """Register the subcommands on `lmforge`'s subparsers."""
    for name, func, summary in (
            ("promote", cmd_promote, "make a model version the champion by hand (recorded; idempotent)"),
            ("rollback", cmd_rollback, "move champion back to the version the last change replaced (idempotent)")):
        p = sub.add_parser(name, help=summary)
        p.add_argument("model", help="registered model name, e.g. lmforge-mlm")
        if name == "promote":
            p.add_argument("version", help="version number")
        p.add_argument("--reason", default="", help="why (kept in the version's tags and the history)")
        p.set_defaults(func=func)
    p = sub.add_parser("predict", help="classify, fill masks or generate with a registered model")
    p.add_argument("model", help="<name>@<alias> or <name>/<version>, e.g. lmforge-mlm@champion")
    p.add_argument("texts", nargs="+", help="input text(s); for fill-mask, with [MASK]")
    p.add_argument("--max-new-tokens", type=int, default=30, help="text-generation: tokens to add (default 30)")
    p.add_argument("--top-k", type=int, default=5, help="fill-mask: candidates per mask (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("lineage", help="trace a model version back to its runs, data, params and git commit")
    p.add_argument("model", help="<name>@<alias> or <name>/<version>, e.g. lmforge-mlm@champion")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_lineage)
