"""Peak memory of the ingest stage: the built-in corpus against a corpus 50x its size.

The 50x corpus is the built-in corpus's documents repeated, each copy with its own suffix
so deduplication keeps them all, written as .jsonl in a temporary directory. Each ingest
runs as the stage does (`python -m pipelines.ingest`, demo profile, its own working
directory and MLflow database) under `/usr/bin/time -v`; without GNU time, a fresh Python
parent reads its child's peak RSS with `resource.getrusage`. The stage's peak includes
MLflow (~100 MB once imported), so `build_corpus` alone is measured too. Ends with one
JSON line:

    {"benchmark": "ingest_memory", "copies": 50, "builtin_peak_rss_mb": ..., "x50_peak_rss_mb": ..., "ratio": ...}

Run from the repository root: `.venv/bin/python benchmarks/ingest_memory.py [--copies 50]`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

GNU_TIME = "/usr/bin/time"
_RUSAGE_PARENT = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
    "print(f'Maximum resident set size (kbytes): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
    "file=sys.stderr); sys.exit(p.returncode)"
)


_BUILD_ONLY = (
    "import os, sys; os.environ.setdefault('ARROW_DEFAULT_MEMORY_POOL', 'system'); "  # as pipelines/ingest.py
    "from pathlib import Path; from components.config import DataConfig, DownstreamConfig; "
    "from components.data.corpus import build_corpus; "
    "build_corpus(DataConfig(source=sys.argv[1]), DownstreamConfig(), 1337, Path('data/corpus'), "
    "Path('data/downstream'))"
)


def run_ingest(workdir: Path, source: str, build_only: bool = False) -> dict:
    """One ingest in `workdir`; its peak RSS (MiB), wall time and corpus stats."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(f"profile: demo\ndata:\n  source: {source}\n", encoding="utf-8")
    stage = [sys.executable, "-m", "pipelines.ingest", "--params", "params.yaml"]
    if build_only:
        stage = [sys.executable, "-c", _BUILD_ONLY, source]
    if os.access(GNU_TIME, os.X_OK):
        command, how = [GNU_TIME, "-v", *stage], "/usr/bin/time -v"
    else:
        command, how = [sys.executable, "-c", _RUSAGE_PARENT, *stage], "getrusage(RUSAGE_CHILDREN)"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {source} failed:\n{proc.stderr[-2000:]}")
    kbytes = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    out = {"peak_rss_mb": round(kbytes / 1024, 1), "seconds": round(seconds, 1), "measured_with": how}
    if not build_only:
        stats = json.loads((workdir / "reports" / "corpus_stats.json").read_text(encoding="utf-8"))
        out.update(documents=stats["documents"], characters=stats["characters"])
    return out


def write_copies(corpus_dir: Path, copies: int, out: Path) -> int:
    """The corpus in `corpus_dir` `copies` times as .jsonl, one copy at a time; bytes written."""
    with open(out, "w", encoding="utf-8") as f:
        for copy in range(copies):
            for split in ("train", "validation"):
                for batch in pq.ParquetFile(corpus_dir / f"{split}.parquet").iter_batches(columns=["text"]):
                    for text in batch.column(0).to_pylist():
                        f.write(json.dumps({"text": f"{text}\n\n(copy {copy})"}, ensure_ascii=False) + "\n")
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmforge-ingest-memory-"))
    try:
        builtin = run_ingest(root / "builtin", "builtin:stdlib-docs")
        print(f"built-in: {builtin}", file=sys.stderr)
        source = root / "x50.jsonl"
        size = write_copies(root / "builtin" / "data" / "corpus", args.copies, source)
        print(f"{args.copies}x corpus: {size / 2**20:.1f} MiB of .jsonl", file=sys.stderr)
        scaled = run_ingest(root / "scaled", str(source))
        print(f"{args.copies}x: {scaled}", file=sys.stderr)
        builtin_core = run_ingest(root / "builtin-core", "builtin:stdlib-docs", build_only=True)
        scaled_core = run_ingest(root / "scaled-core", str(source), build_only=True)
        print(f"build_corpus alone: built-in {builtin_core}, {args.copies}x {scaled_core}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "benchmark": "ingest_memory",
        "copies": args.copies,
        "builtin_peak_rss_mb": builtin["peak_rss_mb"],
        f"x{args.copies}_peak_rss_mb": scaled["peak_rss_mb"],
        "ratio": round(scaled["peak_rss_mb"] / builtin["peak_rss_mb"], 3),
        "build_only_builtin_peak_rss_mb": builtin_core["peak_rss_mb"],
        f"build_only_x{args.copies}_peak_rss_mb": scaled_core["peak_rss_mb"],
        "build_only_ratio": round(scaled_core["peak_rss_mb"] / builtin_core["peak_rss_mb"], 3),
        "builtin_documents": builtin["documents"],
        f"x{args.copies}_documents": scaled["documents"],
        f"x{args.copies}_characters": scaled["characters"],
        f"x{args.copies}_jsonl_mb": round(size / 2**20, 1),
        "builtin_seconds": builtin["seconds"],
        f"x{args.copies}_seconds": scaled["seconds"],
        "measured_with": builtin["measured_with"],
    }))


if __name__ == "__main__":
    main()
