"""Corpus validation: per-document statistics checked by a Great Expectations suite.

The suite runs over a small stats frame (one row per document: length, printable share,
U+FFFD share, duplicate flag), never over the raw text, so it stays fast on big corpora.
The parquet files are read in batches; only the stats are kept in memory.

Great Expectations is imported inside `validate_corpus` (the import alone takes ~2.5 s).
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import ValidateConfig
from components.io import atomic_dir, write_json_atomic, write_text_atomic

SPLITS = ("train", "validation")
CORPUS_COLUMNS = ("doc_id", "source", "text")
STATS_COLUMNS = (
    "split", "doc_id", "n_chars", "printable_share", "replacement_share", "is_duplicate",
    "text_is_null_or_empty",
)
REPLACEMENT_CHAR = "\ufffd"
EXAMPLES = 5  # doc_ids kept per failed expectation
SNIPPET_CHARS = 80  # of each offending document's text, in the failure report
READ_BATCH_ROWS = 10_000
# GX Data Docs go in this folder of the report (reports/validation/gx/index.html).
DATA_DOCS_DIR = "gx"
DATA_DOCS_SITE = "lmforge"
DATA_DOCS_RUN_NAME = "lmforge-validate"
VENDOR_DIR = Path(__file__).resolve().parent / "gx_vendor"
_BT = "https://unpkg.com/bootstrap-table@1.19.1/dist"
_VENDORED = {  # CDN URL in GX's pages -> our copy (gx_vendor/README.md)
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.min.js",
    f"{_BT}/bootstrap-table.min.css": "bootstrap-table.min.css",
    f"{_BT}/bootstrap-table.min.js": "bootstrap-table.min.js",
    f"{_BT}/extensions/filter-control/bootstrap-table-filter-control.min.js": "bootstrap-table-filter-control.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker.min.js",  # filter-control calls it: without it the index's table stays empty
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-filter-control.min.css",
}


def _printable_share(text: str) -> float:
    # Fast path in C: once whitespace is removed, most documents are wholly printable.
    if "".join(text.split()).isprintable():
        return 1.0
    bad = sum(1 for ch in text if not (ch.isprintable() or ch.isspace()))
    return 1.0 - bad / len(text)


def document_stats(frame: pd.DataFrame, seen_hashes: set[bytes] | None = None) -> pd.DataFrame:
    """One row of statistics per document of `frame` (columns `split`, `doc_id`, `text`).

    `is_duplicate` marks a text whose hash was seen earlier in `frame` or in `seen_hashes`
    (updated in place, so batches of both splits can share one set). A null, empty or
    whitespace-only text is flagged in `text_is_null_or_empty` and its other stats are null,
    so it fails only that check.
    """
    missing = [c for c in ("split", "doc_id", "text") if c not in frame.columns]
    if missing:
        raise ValueError(f"document_stats: frame lacks column(s) {', '.join(missing)}")
    seen = set() if seen_hashes is None else seen_hashes
    texts = frame["text"]
    null = texts.isna().to_numpy()
    empty = [bool(n) or not t or t.isspace() for n, t in zip(null, texts.to_numpy())]
    valid = ~pd.Series(empty, index=frame.index, dtype=bool)
    good = texts[valid].astype(str)

    n_chars = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    printable = pd.Series(math.nan, index=frame.index, dtype="float64")
    replacement = pd.Series(math.nan, index=frame.index, dtype="float64")
    if len(good):
        lengths = good.str.len().astype("int64")
        n_chars[valid] = lengths
        printable[valid] = [_printable_share(t) for t in good]
        replacement[valid] = good.str.count(REPLACEMENT_CHAR).astype("int64") / lengths

    duplicate = []
    for is_empty, text in zip(empty, texts.to_numpy()):
        if is_empty:
            duplicate.append(False)
            continue
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
        duplicate.append(digest in seen)
        seen.add(digest)

    return pd.DataFrame({
        "split": frame["split"].astype(str).to_numpy(),
        "doc_id": frame["doc_id"].astype(str).to_numpy(),
        "n_chars": n_chars.to_numpy(),
        "printable_share": printable.to_numpy(),
        "replacement_share": replacement.to_numpy(),
        "is_duplicate": pd.array(duplicate, dtype=bool),
        "text_is_null_or_empty": pd.array(empty, dtype=bool),
    }).astype({"n_chars": "Int64"})


def _split_path(corpus_dir: Path, split: str) -> Path:
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"{corpus_dir}: corpus directory not found; run the ingest stage first")
    path = corpus_dir / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus split not found; run the ingest stage first")
    return path


def corpus_stats(corpus_dir: Path) -> pd.DataFrame:
    """`document_stats` of both splits, read in batches (train first, so a validation
    document that repeats a training one is the duplicate)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus_dir = Path(corpus_dir)
    paths = {split: _split_path(corpus_dir, split) for split in SPLITS}
    seen: set[bytes] = set()
    parts = []
    for split, path in paths.items():
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: not a readable parquet file ({e}); re-run the ingest stage") from None
        missing = [c for c in CORPUS_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                f"{', '.join(CORPUS_COLUMNS)} (re-run the ingest stage)"
            )
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=["doc_id", "text"]):
            frame = batch.to_pandas()
            frame.insert(0, "split", split)
            parts.append(document_stats(frame, seen))
    if not parts:
        empty = pd.DataFrame({"split": [], "doc_id": [], "text": []}, dtype=object)
        parts.append(document_stats(empty))
    return pd.concat(parts, ignore_index=True)


def _checks(cfg: ValidateConfig, gxe: Any, Column: Any) -> list[tuple[str, str, Any]]:
    """(name, description, expectation) for each check, in report order."""
    mostly = "" if cfg.mostly == 1 else f" (mostly {cfg.mostly:g})"
    per_doc = {"mostly": cfg.mostly}
    return [
        ("text_not_empty", f"text not null or empty{mostly}",
         gxe.ExpectColumnValuesToBeInSet(column="text_is_null_or_empty", value_set=[False], **per_doc)),
        ("doc_length", f"n_chars between {cfg.min_doc_chars} and {cfg.max_doc_chars}{mostly}",
         gxe.ExpectColumnValuesToBeBetween(
             column="n_chars", min_value=cfg.min_doc_chars, max_value=cfg.max_doc_chars, **per_doc)),
        ("printable_share", f"printable_share >= {cfg.min_printable_share:g}{mostly}",
         gxe.ExpectColumnValuesToBeBetween(
             column="printable_share", min_value=cfg.min_printable_share, **per_doc)),
        ("replacement_share", f"replacement_share <= {cfg.max_replacement_share:g}{mostly}",
         gxe.ExpectColumnValuesToBeBetween(
             column="replacement_share", max_value=cfg.max_replacement_share, **per_doc)),
        ("duplicate_share", f"duplicate share <= {cfg.max_duplicate_share:g}",
         gxe.ExpectColumnMeanToBeBetween(column="is_duplicate", max_value=cfg.max_duplicate_share)),
        ("document_count", f"documents >= {cfg.min_documents}",
         gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_documents)),
        ("character_count", f"total characters >= {cfg.min_characters}",
         gxe.ExpectColumnSumToBeBetween(column="n_chars", min_value=cfg.min_characters)),
        ("validation_document_count", f"validation documents >= {cfg.min_validation_documents}",
         gxe.ExpectTableRowCountToBeBetween(
             min_value=cfg.min_validation_documents, row_condition=Column("split") == "validation")),
    ]


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars become Python ones, NaN and pd.NA become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _run_suite(stats: pd.DataFrame, cfg: ValidateConfig,
               data_docs_dir: Path | None = None) -> tuple[dict, list[tuple[str, str, dict]]]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.expectations.row_conditions import Column

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("corpus_stats")
        .add_dataframe_asset("documents")
        .add_batch_definition_whole_dataframe("all_documents")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="corpus"))
    checks = []
    for name, description, expectation in _checks(cfg, gxe, Column):
        expectation.meta = {"check": name}
        checks.append((name, description, suite.add_expectation(expectation).id))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="corpus", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="corpus",
        validation_definitions=[definition],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES,
                       "unexpected_index_column_names": ["doc_id"]},
    ))
    run = checkpoint.run(batch_parameters={"dataframe": stats},
                         run_id=RunIdentifier(run_name=DATA_DOCS_RUN_NAME))
    if data_docs_dir is not None:
        _build_data_docs(context, data_docs_dir)
    (validation,) = run.run_results.values()
    by_id = {r.expectation_config.id: r.to_json_dict() for r in validation.results}
    return validation.statistics, [(name, desc, by_id[eid]) for name, desc, eid in checks]


def _build_data_docs(context: Any, site_dir: Path) -> None:
    """GX's own Data Docs of this run (the suite's page, the validation result's page with
    every expectation and its observed value, an index) as static files under `site_dir`:
    the ephemeral context's in-memory stores hold the suite and the result to render."""
    context.add_data_docs_site(DATA_DOCS_SITE, {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(site_dir).resolve())},
    })
    context.build_data_docs(site_names=[DATA_DOCS_SITE])
    _prune_static(Path(site_dir))
    _vendor_cdn_files(Path(site_dir))


def _prune_static(site: Path) -> None:
    """Drop the static files no page or stylesheet names (GX copies 3.4 MB of tutorial GIFs and
    logos it does not show): reports/validation is versioned with git."""
    texts = "".join(p.read_text(errors="ignore") for p in site.rglob("*") if p.suffix in (".html", ".css"))
    for path in (site / "static").rglob("*"):
        if path.is_file() and path.suffix not in (".html", ".css") and path.name not in texts:
            path.unlink()


def _vendor_cdn_files(site: Path) -> None:
    """Point the pages at local copies of the CDN files they need to render (gx_vendor/README.md):
    offline, the index would be empty and every page unstyled. Subresource-integrity attributes
    go too: a file:// page cannot fetch with CORS, and the copies are the releases themselves."""
    vendor = site / "static" / "vendor"
    vendor.mkdir(parents=True, exist_ok=True)
    for name in set(_VENDORED.values()):
        shutil.copyfile(VENDOR_DIR / name, vendor / name)
    for page in site.rglob("*.html"):
        prefix = os.path.relpath(vendor, page.parent).replace(os.sep, "/")
        text = page.read_text(encoding="utf-8")
        for url, name in _VENDORED.items():
            text = text.replace(url, f"{prefix}/{name}")
        page.write_text(re.sub(r'\s(?:integrity|crossorigin)="[^"]*"', "", text), encoding="utf-8")


def _entry(name: str, description: str, raw: dict, stats: pd.DataFrame) -> dict:
    config, result = raw["expectation_config"], raw.get("result") or {}
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    rows = (result.get("partial_unexpected_index_list") or [])[:EXAMPLES]
    examples = [row["doc_id"] for row in rows]
    values = [row.get(kwargs.get("column")) for row in rows]
    unexpected = result.get("unexpected_count")
    if name == "duplicate_share":  # an aggregate expectation: list the duplicates ourselves
        duplicates = stats.loc[stats["is_duplicate"], "doc_id"]
        unexpected, examples = int(len(duplicates)), duplicates.head(EXAMPLES).tolist()
        values = [True] * len(examples)
    exception = raw.get("exception_info") or {}
    return _jsonable({
        "name": name,
        "description": description,
        "expectation": config["type"],
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(raw["success"]),
        "observed_value": result.get("observed_value"),
        "unexpected_count": unexpected,
        "unexpected_examples": examples,
        "unexpected_values": values,
        "error": exception.get("exception_message") if exception.get("raised_exception") else None,
    })


_FAILURE_PHRASE = {
    "text_not_empty": "empty",
    "doc_length": "out of range",
    "printable_share": "below the minimum",
    "replacement_share": "above the maximum",
}


def _failure_detail(entry: dict) -> str:
    if entry["error"]:
        return f"error: {entry['error'].splitlines()[0]}"
    count, ids, observed = entry["unexpected_count"], entry["unexpected_examples"], entry["observed_value"]
    noun = "document" if count == 1 else "documents"
    example = f", e.g. {', '.join(i[:12] for i in ids[:2])}" if ids else ""
    if entry["name"] in _FAILURE_PHRASE:
        return f"{count} {noun} {_FAILURE_PHRASE[entry['name']]}{example}"
    if entry["name"] == "duplicate_share" and isinstance(observed, (int, float)):
        return f"share {observed:.4g}: {count} duplicate {noun}{example}"
    return f"observed {observed}"


def _summary(entries: list[dict]) -> str:
    failed = [e for e in entries if not e["success"]]
    if not failed:
        return f"all {len(entries)} expectations passed"
    details = ", ".join(f"{e['description']} ({_failure_detail(e)})" for e in failed)
    return f"{len(failed)} of {len(entries)} expectations failed: {details}"


def validate_corpus(corpus_dir: Path, cfg: ValidateConfig, data_docs_dir: Path | None = None) -> dict:
    """Check the corpus in `corpus_dir` against `cfg`; a JSON-able result (never raises on
    a failed expectation, only on a missing or unreadable corpus). With `data_docs_dir`, GX's
    Data Docs of the run are built there too (`write_validation_report` moves them in)."""
    stats = corpus_stats(Path(corpus_dir))
    statistics, raw = _run_suite(stats, cfg, data_docs_dir)
    entries = [_entry(name, description, r, stats) for name, description, r in raw]
    wanted = {i for e in entries if not e["success"] for i in e["unexpected_examples"]}
    found = _find_documents(Path(corpus_dir), wanted) if wanted else {}
    for e in entries:
        e["documents"] = [{"doc_id": i, "value": _jsonable(v), **found.get(i, {})}
                          for i, v in zip(e["unexpected_examples"], e["unexpected_values"])]
    counts = stats["split"].value_counts()
    return _jsonable({
        "success": all(e["success"] for e in entries),
        "statistics": {k: statistics[k] for k in (
            "evaluated_expectations", "successful_expectations", "unsuccessful_expectations",
            "success_percent")},
        "corpus": {
            "train_documents": counts.get("train", 0),
            "validation_documents": counts.get("validation", 0),
            "characters": stats["n_chars"].sum(),
        },
        "expectations": entries,
        "summary": _summary(entries),
    })


def _find_documents(corpus_dir: Path, doc_ids: set[str]) -> dict[str, dict]:
    """doc_id -> where it is (split:source, every copy) and the start of its text: one more
    pass over the corpus, keeping only the few documents asked for."""
    import pyarrow.parquet as pq

    found: dict[str, dict] = {}
    for split in SPLITS:
        parquet = pq.ParquetFile(_split_path(corpus_dir, split))
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=list(CORPUS_COLUMNS)):
            for doc_id, source, text in zip(*(batch.column(c).to_pylist() for c in CORPUS_COLUMNS)):
                if doc_id in doc_ids:
                    entry = found.setdefault(doc_id, {"where": [], "text": (text or "")[:SNIPPET_CHARS]})
                    entry["where"].append(f"{split}:{source}")
    return found


def failure_report(result: dict, report: str) -> str:
    """Lines for a person reading the stage's stderr: each failed expectation, its observed
    value, and a few offending documents with where they came from and how they start."""
    failed = [e for e in result["expectations"] if not e["success"]]
    lines = [f"corpus failed the gate: {len(failed)} of {len(result['expectations'])} "
             f"expectations failed (report: {report})"]
    total = result["corpus"]["train_documents"] + result["corpus"]["validation_documents"]
    for e in failed:
        column = e["column"] or "value"
        if e["documents"] and e["name"] != "duplicate_share":
            observed = f"failed by {e['unexpected_count']} of {total} documents"
        else:
            observed = f"observed {_show(e['observed_value'])}"
            if e["name"] == "duplicate_share":
                observed += f" ({e['unexpected_count']} duplicate document(s))"
        lines.append(f"  FAILED {e['name']}: expected {e['description']}; {observed}")
        if e["error"]:
            lines.append(f"    error: {e['error'].splitlines()[0]}")
        for doc in e["documents"][:3]:
            where = ", ".join(doc.get("where", [])[:3]) or "?"
            value = "" if e["name"] == "duplicate_share" else f" {column}={_show(doc['value'])}"
            lines.append(f"    doc {doc['doc_id'][:12]}{value} in {where}: {doc.get('text', '')!r}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_docs_html(links: dict[str, str]) -> str:
    if not links:
        return ""
    names = {"validation": "this run's validation result (every expectation, its observed value)",
             "suite": "the expectation suite", "index": "the site's index"}
    items = ", ".join(f'<a href="{html.escape(links[k])}">{names[k]}</a>' for k in names if k in links)
    return f"<p>Great Expectations' own Data Docs of this run: {items}.</p>"


def _report_html(result: dict, links: dict[str, str] | None = None) -> str:
    e = html.escape
    rows = []
    for x in result["expectations"]:
        observed = x["observed_value"]
        if observed is None and x["unexpected_count"] is not None:
            observed = f"{x['unexpected_count']} unexpected"
        status = "pass" if x["success"] else "FAIL"
        rows.append(
            f'<tr class="{status.lower()}"><td>{status}</td><td>{e(x["description"])}</td>'
            f'<td><code>{e(x["expectation"])}</code></td><td>{e(str(x["column"] or ""))}</td>'
            f'<td>{e(str(observed if observed is not None else ""))}</td>'
            f'<td>{"<br>".join(_document_html(d) for d in x.get("documents", []))}</td></tr>'
        )
    verdict = "passed" if result["success"] else "failed"
    corpus = result.get("corpus", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Corpus validation: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
tr.pass td:first-child {{ color: #176b2c; }}
tr.fail td:first-child {{ color: #b00020; font-weight: bold; }}
</style></head><body>
<h1>Corpus validation {verdict}</h1>
<p>{e(result["summary"])}</p>
<p>{corpus.get("train_documents", "?")} train and {corpus.get("validation_documents", "?")}
validation documents, {corpus.get("characters", "?")} characters.</p>
{_data_docs_html(links or {})}
<table><thead><tr><th>Status</th><th>Check</th><th>Expectation</th><th>Column</th>
<th>Observed</th><th>Offending documents</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def _document_html(doc: dict) -> str:
    where = ", ".join(doc.get("where", []))
    return (f'<code>{html.escape(doc["doc_id"][:12])}</code> {html.escape(where)} '
            f'<q>{html.escape(doc.get("text", ""))}</q>')


def data_docs_links(site: Path, prefix: str = DATA_DOCS_DIR) -> dict[str, str]:
    """Relative links into a built Data Docs site: its index, the validation result's page and
    the suite's page (GX names the first by run, time and batch, so it is looked up)."""
    found = {"index": site / "index.html",
             "validation": next(iter(sorted((site / "validations").rglob("*.html"))), None),
             "suite": next(iter(sorted((site / "expectations").rglob("*.html"))), None)}
    return {k: f"{prefix}/{v.relative_to(site).as_posix()}" for k, v in found.items() if v and v.is_file()}


def write_validation_report(result: dict, out_dir: Path, data_docs_dir: Path | None = None) -> Path:
    """Write `out_dir/result.json` and `out_dir/index.html` (and GX's Data Docs from
    `data_docs_dir` into `out_dir/gx/`, linked from the table), replacing `out_dir` atomically."""
    json.dumps(result, allow_nan=False)  # fail before touching out_dir if it is not JSON
    with atomic_dir(out_dir) as tmp:
        links = {}
        if data_docs_dir is not None:
            shutil.copytree(data_docs_dir, tmp / DATA_DOCS_DIR)
            links = data_docs_links(tmp / DATA_DOCS_DIR)
        write_json_atomic(tmp / "result.json", result)
        write_text_atomic(tmp / "index.html", _report_html(result, links))
    return Path(out_dir)
