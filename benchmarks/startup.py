"""Stage start-up: what each stage process pays before its work, baseline beside ours.

Every DVC stage is its own process (`python -m pipelines.<stage>`), so imports and the first
reads are paid once per stage: 14 stages in the demo, 20 on the tiny profile the tests run
many times. Two of those costs have a cheaper form, measured here side by side, each in a
fresh interpreter (an import is cached after its first time in a process), alternating
baseline and ours, medians of `--repeats`:

- loading a tokenizer the train_tokenizer stage saved: `AutoTokenizer.from_pretrained` (the
  baseline: it imports torch and every architecture's tokenizer mapping) against
  `components.tokens.tokenization.load_tokenizer` (ours: the saved class directly);
- reading dvc.lock: PyYAML's pure-Python `safe_load` against `components.io.load_yaml`
  (libyaml's CSafeLoader), on the lock of a pipeline run (`--lock`, default ./dvc.lock) or,
  without one, a synthetic lock of the demo's size.

    python -m benchmarks.startup [--repeats 5] [--lock dvc.lock]

Ends with one JSON line: each pair's medians in seconds and the saving per stage process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOKENIZER_BASELINE = """
import time; t = time.perf_counter()
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({path!r})
print(time.perf_counter() - t)
"""
TOKENIZER_OURS = """
import time; t = time.perf_counter()
from components.tokens.tokenization import load_tokenizer
tok = load_tokenizer({path!r})
print(time.perf_counter() - t)
"""
YAML_BASELINE = """
import time, yaml; text = open({path!r}).read(); t = time.perf_counter()
yaml.safe_load(text)
print(time.perf_counter() - t)
"""
YAML_OURS = """
import time; text = open({path!r}).read(); t = time.perf_counter()
from components.io import load_yaml
load_yaml(text)
print(time.perf_counter() - t)
"""


def _seconds(code: str) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return float(out.strip().splitlines()[-1])


def pair(baseline: str, ours: str, repeats: int) -> dict:
    """Medians of `repeats` fresh processes each, baseline and ours alternating."""
    base, mine = [], []
    for _ in range(repeats):
        base.append(_seconds(baseline))
        mine.append(_seconds(ours))
    b, o = statistics.median(base), statistics.median(mine)
    return {"baseline_s": round(b, 3), "ours_s": round(o, 3), "saved_s": round(b - o, 3), "speedup": round(b / o, 2)}


def _tokenizer(root: Path) -> Path:
    """A BERT tokenizer as train_tokenizer saves one, trained on this project's own source
    (no task text: the standard library's docstrings hold the task's held-out texts)."""
    from components.config import TokenizerConfig
    from components.objectives import ARCHITECTURES

    texts = [p.read_text() for p in sorted((ROOT / "components").rglob("*.py"))]
    ARCHITECTURES["bert"].train_tokenizer(texts, TokenizerConfig(vocab_size=4000, min_frequency=2), root / "bert")
    return root / "bert"


def _lock(root: Path) -> Path:
    """A dvc.lock-shaped file of about the demo's size (73 KB): stages with deps, params, outs."""
    import yaml

    stages = {f"stage{i}": {"cmd": f"python -m pipelines.stage{i}",
                            "deps": [{"path": f"components/module{j}.py", "hash": "md5", "md5": f"{i:04d}{j:028d}",
                                      "size": 1000 + j} for j in range(25)],
                            "params": {"params.yaml": {f"section{i}.key{k}": k for k in range(20)}},
                            "outs": [{"path": f"data/out{i}", "hash": "md5", "md5": f"{i:032d}.dir", "size": 10,
                                      "nfiles": 3}]} for i in range(20)}
    path = root / "dvc.lock"
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lock", default="dvc.lock", help="a dvc.lock to parse (default ./dvc.lock; synthetic if absent)")
    args = parser.parse_args(argv)
    from components.train.precision import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
        lock = Path(args.lock) if Path(args.lock).exists() else _lock(Path(tmp))
        result = {"benchmark": "startup", "cpu": cpu_name(), "repeats": args.repeats,
                  "lock_bytes": lock.stat().st_size,
                  "tokenizer": pair(TOKENIZER_BASELINE.format(path=str(tokenizer)),
                                    TOKENIZER_OURS.format(path=str(tokenizer)), args.repeats),
                  "dvc_lock": pair(YAML_BASELINE.format(path=str(lock)), YAML_OURS.format(path=str(lock)), args.repeats)}
    for name in ("tokenizer", "dvc_lock"):
        r = result[name]
        print(f"{name}: baseline {r['baseline_s']:.2f} s, ours {r['ours_s']:.2f} s ({r['speedup']:.1f}x, "
              f"{r['saved_s']:.2f} s saved a process)", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
