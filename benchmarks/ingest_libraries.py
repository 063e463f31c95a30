"""Ingest's hand-written machinery against the libraries that could replace it.

Two pieces, each on a corpus 50x the built-in one (its documents repeated: most copies get
their own suffix, every tenth copy of a document is left exact, so dedup drops ~10%):

- json: reading a .json file that holds one top-level array of objects (one per line, as
  `json.dumps` of a list with a newline between items writes it). Ours: `read_documents`,
  whose .json reader is ijson's C backend (yajl2_c) fed a line at a time, so that each item
  and each error is named by its line (`components/data/formats.py`). Library: bare
  `ijson.items` over the file, the text field checked the same way: what the line
  tracking costs. Until commit 4eb14d8 ours was a hand-written incremental parser (~120
  lines over `json.JSONDecoder.raw_decode`); this benchmark measured it at 4.51 s and 76 MiB
  peak against ijson's 1.86 s and 63 MiB, so ijson replaced it. `pyarrow.json` reads only
  newline-delimited JSON, not an array: it is tried and reported as unsupported.
- sort: the external sort that orders the cleaned documents by doc_id and drops exact
  duplicates (first copy kept). Ours: `sort_unique` (runs of 4 MiB of text spilled to
  parquet, merged 16 at a time). Library: DuckDB (the documents appended in Arrow batches to
  a table in a database file in the work directory, `ORDER BY doc_id, seq` streamed back in
  batches, equal ids dropped as they meet), one thread like ours, memory_limit 128MB (the
  smallest power of two that sorts the 50x corpus: at 64MB it fails with OutOfMemory). pyarrow has
  no out-of-core sort (`Table.sort_by` and Acero's `order_by` hold the whole table); it is
  measured in memory for reference.

Each side runs in a child process of its own (`python -m benchmarks.ingest_libraries --side
...`), so peak RSS (VmHWM) is per side; the child also reports its RSS after its imports,
before the work. Both sides read the same prepared input and hash what they yield: the
parent checks the hashes agree. Sides are interleaved, three repetitions, medians. The
machine is shared, so repeat before trusting a difference of a few percent. Ends with one
JSON line:

    {"benchmark": "ingest_libraries", "cpu": ..., "json_ours_s": ..., "json_ijson_s": ..., ...}

Needs `ijson` and `duckdb` importable (a side whose library is missing is skipped):

    python -m benchmarks.ingest_libraries [--copies 50] [--repeats 3] [--only json|sort]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

SIDES = {"json": ("ours", "ijson"), "sort": ("ours", "duckdb", "pyarrow_in_memory")}
DUCKDB_MEMORY_LIMIT = "128MB"
ARROW_BATCH_ROWS = 1024


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, MiB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]) / 1024


def prepare(root: Path, copies: int) -> dict:
    """The built-in corpus `copies` times: a .json array and a parquet file of cleaned documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data.clean import clean_documents, new_counts
    from components.config import DataConfig, DownstreamConfig
    from components.data.corpus import build_corpus
    from components.data.rows import CORPUS_SCHEMA

    build_corpus(DataConfig(), DownstreamConfig(), 1337, root / "corpus", root / "downstream")
    texts = [t for split in ("train", "validation")
             for t in pq.read_table(root / "corpus" / f"{split}.parquet")["text"].to_pylist()]

    def raw() -> Iterator[tuple[str, str]]:
        for copy in range(copies):
            for i, text in enumerate(texts):
                exact = copy == 0 or (i + copy) % 10 == 0  # copy 0 is the original, these repeat it
                yield f"x50:{copy}:{i}", text if exact else f"{text}\n\n(copy {copy})"

    array = root / "x50.json"
    with open(array, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps({"id": s, "text": t}, ensure_ascii=False) for s, t in raw()) + "\n]\n")
    docs = list(clean_documents(raw(), 20, new_counts()))
    pq.write_table(pa.table({n: [d[i] for d in docs] for i, n in enumerate(CORPUS_SCHEMA.names)},
                   schema=CORPUS_SCHEMA), root / "x50-docs.parquet", row_group_size=ARROW_BATCH_ROWS)
    return {"documents": len(docs), "characters": sum(len(d.text) for d in docs),
            "json_mb": round(array.stat().st_size / 2**20, 1), "builtin_documents": len(texts)}


def _documents(path: Path):
    """The prepared documents, read a row group at a time (the same input for every sort)."""
    import pyarrow.parquet as pq

    from components.data.clean import Document

    pf = pq.ParquetFile(path)
    for group in range(pf.num_row_groups):
        cols = pf.read_row_group(group).to_pydict()
        yield from map(Document._make, zip(cols["doc_id"], cols["source"], cols["text"]))


def json_ours(path: Path) -> Iterator[str]:
    from components.data.sources import read_documents

    return (text for _, text in read_documents(str(path), "text"))


def json_ijson(path: Path) -> Iterator[str]:
    import ijson

    with open(path, "rb") as f:
        for i, record in enumerate(ijson.items(f, "item", use_float=True)):
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}, item {i}: no string field 'text'")
            yield text


def sort_ours(path: Path, work: Path, counts: dict) -> Iterator:
    from components.data.dedup import sort_unique

    return sort_unique(_documents(path), work, counts)


def sort_duckdb(path: Path, work: Path, counts: dict) -> Iterator:
    import duckdb
    import pyarrow as pa

    work.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(work / "sort.duckdb"), config={
        "memory_limit": DUCKDB_MEMORY_LIMIT, "temp_directory": str(work), "threads": 1,
        "preserve_insertion_order": False})
    con.execute("CREATE TABLE docs (seq BIGINT, doc_id VARCHAR, source VARCHAR, text VARCHAR)")
    rows: list = []
    seq = 0

    def flush() -> None:
        con.register("batch", pa.table({"seq": range(seq - len(rows), seq), "doc_id": [d[0] for d in rows],
                                        "source": [d[1] for d in rows], "text": [d[2] for d in rows]}))
        con.execute("INSERT INTO docs SELECT * FROM batch")
        con.unregister("batch")

    for doc in _documents(path):
        rows.append(doc)
        seq += 1
        if len(rows) == ARROW_BATCH_ROWS:
            flush()
            rows = []
    if rows:
        flush()
    reader = con.sql("SELECT doc_id, source, text FROM docs ORDER BY doc_id, seq").to_arrow_reader(ARROW_BATCH_ROWS)
    yield from _first_of_each_id(reader, counts)
    con.close()


def sort_pyarrow_in_memory(path: Path, work: Path, counts: dict) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.append_column("seq", pa.array(range(table.num_rows), pa.int64()))
    table = table.sort_by([("doc_id", "ascending"), ("seq", "ascending")])
    yield from _first_of_each_id(table.to_batches(ARROW_BATCH_ROWS), counts)


def _first_of_each_id(batches, counts: dict) -> Iterator:
    """Documents from Arrow batches sorted by (doc_id, reading order), each id once."""
    from components.data.clean import Document

    previous = None
    for batch in batches:
        cols = batch.to_pydict()
        for doc in map(Document._make, zip(cols["doc_id"], cols["source"], cols["text"])):
            if doc.doc_id == previous:
                counts["duplicates_removed"] += 1
                continue
            previous = doc.doc_id
            yield doc


def run_side(piece: str, side: str, path: Path, work: Path) -> dict:
    """One measurement, in this (child) process."""
    # Loaded before the baseline RSS: pyarrow and ijson by every side (ours uses both), DuckDB by its own.
    import ijson  # noqa: F401
    import pyarrow  # noqa: F401
    if side == "duckdb":
        import duckdb  # noqa: F401
    fn = globals()[f"{piece}_{side}"]
    before = rss_mb("VmRSS")
    digest, n = hashlib.sha256(), 0
    counts = {"duplicates_removed": 0}
    start = time.perf_counter()
    items = fn(path) if piece == "json" else fn(path, work, counts)
    for item in items:
        digest.update((item if piece == "json" else f"{item.doc_id}\0{item.source}\0").encode("utf-8"))
        n += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": rss_mb("VmHWM"), "rss_before_mb": before, "items": n,
            "duplicates_removed": counts["duplicates_removed"], "sha256": digest.hexdigest()}


def measure(piece: str, side: str, path: Path, work: Path) -> dict | None:
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}  # as pipelines/ingest.py
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest_libraries", "--side", f"{piece}:{side}",
                           "--input", str(path), "--work", str(work)], env=env, capture_output=True, text=True)
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        if "ModuleNotFoundError" in proc.stderr:
            print(f"{piece}/{side}: skipped ({proc.stderr.strip().splitlines()[-1]})", file=sys.stderr)
            return None
        raise SystemExit(f"{piece}/{side} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pyarrow_json_reads_an_array(root: Path) -> bool:
    import pyarrow as pa
    import pyarrow.json as pj

    sample = root / "sample.json"
    sample.write_text('[\n{"text": "a"},\n{"text": "b"}\n]\n', encoding="utf-8")
    try:
        return pj.read_json(sample).num_rows == 2
    except pa.ArrowInvalid:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=sorted(SIDES), help="measure one piece")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        piece, side = args.side.split(":")
        print(json.dumps(run_side(piece, side, args.input, args.work)))
        return
    root = Path(tempfile.mkdtemp(prefix="lmforge-ingest-libraries-"))
    try:
        corpus = prepare(root, args.copies)
        print(f"{args.copies}x corpus: {corpus}", file=sys.stderr)
        inputs = {"json": root / "x50.json", "sort": root / "x50-docs.parquet"}
        runs: dict[tuple[str, str], list[dict]] = {}
        for rep in range(args.repeats):
            for piece, sides in SIDES.items():
                if args.only and piece != args.only:
                    continue
                for side in sides:
                    got = measure(piece, side, inputs[piece], root / f"work-{piece}-{side}-{rep}")
                    if got is not None:
                        runs.setdefault((piece, side), []).append(got)
                        print(f"rep {rep} {piece}/{side}: {got['seconds']:.2f} s, peak {got['peak_rss_mb']:.0f} MiB "
                              f"(after imports {got['rss_before_mb']:.0f})", file=sys.stderr)
        arrow_json = pyarrow_json_reads_an_array(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = report(runs, corpus, args.copies)
    summary["pyarrow_json_reads_top_level_array"] = arrow_json
    print(json.dumps(summary))


def report(runs: dict, corpus: dict, copies: int) -> dict:
    """Medians per side, a table on stderr, the ratios library/ours; checks the sides agree."""
    out = {"benchmark": "ingest_libraries", "cpu": cpu_name(), "copies": copies, **corpus}
    print("| piece | side | seconds | peak RSS MiB | RSS after imports MiB |\n|---|---|---|---|---|", file=sys.stderr)
    for (piece, side), reps in runs.items():
        if len({r["sha256"] for r in reps + runs[(piece, "ours")]}) != 1:
            raise SystemExit(f"{piece}/{side} yields something else than ours")
        med = {k: round(statistics.median(r[k] for r in reps), 2) for k in ("seconds", "peak_rss_mb", "rss_before_mb")}
        print(f"| {piece} | {side} | {med['seconds']} | {med['peak_rss_mb']:.0f} | {med['rss_before_mb']:.0f} |",
              file=sys.stderr)
        out.update({f"{piece}_{side}_s": med["seconds"], f"{piece}_{side}_peak_rss_mb": med["peak_rss_mb"],
                    f"{piece}_{side}_rss_after_imports_mb": med["rss_before_mb"]})
        if side != "ours":
            out[f"{piece}_{side}_time_ratio"] = round(med["seconds"] / out[f"{piece}_ours_s"], 3)
    if ("sort", "ours") in runs:
        out["sort_duplicates_removed"] = runs[("sort", "ours")][0]["duplicates_removed"]
    out["peak_rss_measured_with"] = "VmHWM of one child process per side"
    return out


if __name__ == "__main__":
    main()
