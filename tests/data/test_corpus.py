"""Ingest: cleaning, dedup, splits, local sources, and the built-in stdlib corpus and task."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import DataConfig, DownstreamConfig
from components.data import stdlib_docs
from components.data.clean import Document, clean_documents, clean_text, doc_id_of, match_text, new_counts
from components.data.corpus import build_corpus, prepare_documents
from components.data.dedup import sort_unique
from components.data.split import is_validation, split_documents, write_splits
from components.data.sources import read_documents

SPLITS = ("train", "validation", "test")


def _docs(n: int, prefix: str = "document") -> list[Document]:
    texts = [f"{prefix} number {i} with enough characters" for i in range(n)]
    return sorted((Document(doc_id_of(t), f"s{i}", t) for i, t in enumerate(texts)))


def _read(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """One default build of the built-in corpus and task (about 2-3 s), shared by the tests."""
    root = tmp_path_factory.mktemp("builtin")
    stats = build_corpus(DataConfig(), DownstreamConfig(), 1337, root / "corpus", root / "downstream")
    return stats, root


def test_clean_text_normalises_to_nfc():
    assert clean_text("Cafe\u0301 ok") == "Caf\u00e9 ok"


def test_clean_text_strips_controls_and_tidies_whitespace():
    raw = "  a\x00b\x07c\td\r\ne  \t\r\n\n\n\nf\x1b\x9f\rg  "
    assert clean_text(raw) == "abc\td\ne\n\nf\ng"


def test_clean_text_keeps_chinese_apart_from_cleaning():
    chinese = "机器学习是人工智能的一个分支。\n\n它研究计算机怎样模拟人类的学习行为，以获取新的知识。"
    assert clean_text(chinese) == chinese
    messy = chinese.replace("\n\n", "  \r\n\r\n\r\n\r\n") + "\x0c"
    assert clean_text(messy) == chinese


def test_prepare_documents_counts_duplicates_and_short():
    raw = [
        ("a", "The first document, long enough."),
        ("b", "The first document, long enough.  \r\n"),  # same text once cleaned
        ("c", "too short"),
        ("d", "The second document, also long enough."),
    ]
    docs, counts = prepare_documents(iter(raw), min_chars=20)
    assert counts == {"documents_read": 4, "duplicates_removed": 1, "short_removed": 1}
    assert [d.doc_id for d in docs] == sorted(d.doc_id for d in docs)
    assert {d.source for d in docs} == {"a", "d"}  # the first copy is the one kept
    assert all(d.doc_id == doc_id_of(d.text) for d in docs)


def test_max_documents_keeps_first_by_doc_id():
    raw = [(f"s{i}", f"document number {i} is long enough") for i in range(10)]
    everything, _ = prepare_documents(iter(raw), min_chars=10)
    first, _ = prepare_documents(iter(raw), min_chars=10, max_documents=4)
    assert first == everything[:4]


def test_split_is_deterministic_and_stable_when_documents_are_added():
    docs = _docs(400)
    train, val = split_documents(docs, 0.1)
    assert (train, val) == split_documents(list(docs), 0.1)
    assert 10 <= len(val) <= 80 and len(train) + len(val) == 400
    assert all(is_validation(d.doc_id, 0.1) for d in val)
    grown = sorted(docs + _docs(100, prefix="added"))
    train2, val2 = split_documents(grown, 0.1)
    assert set(val) <= set(val2) and set(train) <= set(train2)


def test_split_validation_non_empty_from_two_documents():
    docs = _docs(2)
    train, val = split_documents(docs, 1e-9)
    assert len(train) == 1 and len(val) == 1
    assert split_documents(docs[:1], 1e-9) == (docs[:1], [])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"validation_fraction": 0.7}, "data.validation_fraction"),
        ({"validation_fraction": 0.0}, "data.validation_fraction"),
        ({"min_chars": 0}, "data.min_chars"),
        ({"max_documents": -1}, "data.max_documents"),
        ({"source": "builtin:wikipedia"}, "data.source"),
        ({"source": ""}, "data.source"),
        ({"text_column": ""}, "data.text_column"),
    ],
)
def test_data_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DataConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task": "builtin:imdb"}, "downstream.task"),
        ({"task": " "}, "downstream.task"),
        ({"text_column": "x", "label_column": "x"}, "downstream.text_column"),
        ({"label_column": ""}, "downstream.label_column"),
        ({"test_fraction": 0.5}, "downstream.test_fraction"),
        ({"validation_fraction": -0.1}, "downstream.validation_fraction"),
        ({"min_chars": 0}, "downstream.min_chars"),
        ({"max_examples_per_split": 3}, "downstream.max_examples_per_split"),
    ],
)
def test_downstream_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DownstreamConfig(**kwargs)


def test_error_message_names_value_and_range():
    with pytest.raises(ValueError, match=r"must be in \(0, 0\.5\), got 0\.7"):
        DataConfig(validation_fraction=0.7)


def _raw_with_duplicates(n: int) -> list[tuple[str, str]]:
    texts = [f"Document {i}: " + "some words of text " * (1 + i % 5) for i in range(n)]
    # Every fifth document comes back later, so copies land in different sort runs.
    return [(f"s{i}", t) for i, t in enumerate(texts)] + [(f"copy{i}", texts[i]) for i in range(0, n, 5)]


def test_sort_unique_spills_runs_and_merges_them_like_an_in_memory_sort(tmp_path):
    raw = _raw_with_duplicates(300)
    in_memory, memory_counts = prepare_documents(iter(raw), min_chars=10)
    counts = new_counts()
    work = tmp_path / "work"
    spilled = list(sort_unique(clean_documents(iter(raw), 10, counts), work, counts, run_chars=2_000, fanin=3))
    assert spilled == in_memory and counts == memory_counts
    assert counts["duplicates_removed"] == 60
    assert {d.source for d in spilled} == {f"s{i}" for i in range(300)}  # the first copy is kept
    assert [p.name for p in work.iterdir() if p.name.startswith("run-0-")] == []  # merged away
    assert any(p.name.startswith("run-2-") for p in work.iterdir())  # two levels of merging


def test_spilled_and_in_memory_builds_write_identical_bytes(tmp_path):
    raw = _raw_with_duplicates(200)
    for name, run_chars in (("spilled", 1_500), ("memory", 10**9)):
        out = tmp_path / name
        out.mkdir()
        counts = new_counts()
        docs = sort_unique(clean_documents(iter(raw), 10, counts), tmp_path / f"{name}-work", counts, run_chars)
        summary = write_splits(docs, out, 0.2, 150)
        assert summary["documents"] == 150 and counts["duplicates_removed"] == 40  # counted past the cap
    for split in ("train", "validation"):
        assert (tmp_path / "spilled" / f"{split}.parquet").read_bytes() == \
            (tmp_path / "memory" / f"{split}.parquet").read_bytes()
    assert len(list((tmp_path / "spilled-work").iterdir())) > 1 and not (tmp_path / "memory-work").exists()


def test_max_documents_is_a_hash_sample_whatever_the_reading_order():
    raw = [(f"s{i}", f"document number {i} is long enough") for i in range(50)]
    forward, _ = prepare_documents(iter(raw), min_chars=10, max_documents=7)
    backward, _ = prepare_documents(iter(raw[::-1]), min_chars=10, max_documents=7)
    assert forward == backward and len(forward) == 7


def test_jsonl_missing_field_names_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine document text"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"docs\.jsonl, line 2: no field 'text'"):
        list(read_documents(str(path), "text"))


def test_parquet_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["some text"]}), path)
    with pytest.raises(ValueError, match=r"docs\.parquet: no column 'text'"):
        list(read_documents(str(path), "text"))


def test_no_matching_files_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "missing", tmp_path / "*.jsonl"):
        with pytest.raises(ValueError, match="data.source") as info:
            list(read_documents(str(source), "text"))
        assert str(source) in str(info.value)


def test_failed_build_leaves_previous_output(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"nope": 1}\n', encoding="utf-8")
    corpus_dir, downstream_dir = tmp_path / "corpus", tmp_path / "downstream"
    corpus_dir.mkdir()
    (corpus_dir / "train.parquet").write_text("previous run", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        build_corpus(DataConfig(source=str(tmp_path / "bad.jsonl")), DownstreamConfig(), 0,
                     corpus_dir, downstream_dir)
    assert (corpus_dir / "train.parquet").read_text(encoding="utf-8") == "previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "corpus"]


def test_build_with_local_source(tmp_path):
    lines = [json.dumps({"text": f"Local document {i}: a sentence that is long enough."}) for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines + lines[:3]) + "\n", encoding="utf-8")
    data = DataConfig(source=str(tmp_path / "docs.jsonl"), validation_fraction=0.2)
    stats = build_corpus(data, DownstreamConfig(max_examples_per_split=30), 0,
                         tmp_path / "corpus", tmp_path / "downstream")
    assert stats["documents_read"] == 43 and stats["duplicates_removed"] == 3
    assert stats["documents"] == 40 and stats["excluded_test_documents"] == 0
    train, val = (_read(tmp_path / "corpus" / f"{s}.parquet") for s in ("train", "validation"))
    assert len(train["text"]) + len(val["text"]) == 40 and val["text"]
    assert all(s.startswith(f"{tmp_path}/docs.jsonl:") for s in train["source"] + val["source"])
    for split in SPLITS:
        assert len(_read(tmp_path / "downstream" / f"{split}.parquet")["text"]) == 30


def test_stdlib_sources_skip_tests_private_and_tools():
    names = [name for name, _ in stdlib_docs.stdlib_sources()]
    assert names == sorted(names)
    assert {"json", "email.mime.text", "tkinter.ttk", "asyncio.__main__"} <= set(names)
    skipped = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "__pycache__", "site-packages"}
    for name in names:
        parts = name.split(".")
        assert not skipped & set(parts), name
        assert all(not p.startswith("_") or p == "__main__" for p in parts), name


def test_docstrings_in_source_order():
    source = b'"""Module doc."""\nclass A:\n    """Class A."""\n    def f(self):\n        """Method f."""\n' \
             b'def g():\n    """Function g."""\n    def inner():\n        """Inner."""\n'
    assert stdlib_docs.docstrings_of(source, "x.py") == ("Module doc.", "Class A.", "Method f.",
                                                         "Function g.", "Inner.")


def test_builtin_task_size_and_splits(builtin):
    stats, root = builtin
    labels = json.loads((root / "downstream" / "labels.json").read_text(encoding="utf-8"))["labels"]
    assert labels == list(stdlib_docs.LABELS) and len(labels) >= 5
    splits = {s: _read(root / "downstream" / f"{s}.parquet") for s in SPLITS}
    assert sum(len(t["text"]) for t in splits.values()) >= 1500
    assert pq.read_schema(root / "downstream" / "test.parquet").field("label").type == pa.int64()
    for split, table in splits.items():
        assert stats[f"downstream_{split}"] == len(table["text"])
        assert set(table["label"]) == set(range(len(labels))), f"{split} misses a class"
        assert all(len(t) >= DownstreamConfig().min_chars for t in table["text"])
        per_class = Counter(table["label"])
        # 15, not more: split by package, gui-and-multimedia holds out only what is not
        # tkinter or turtle (about 45 docstrings in all).
        assert min(per_class.values()) >= 15, (split, per_class)
    packages = {s: {stdlib_docs.package_of(m) for m in t["module"]} for s, t in splits.items()}
    assert not packages["train"] & packages["validation"]
    assert not packages["train"] & packages["test"] and not packages["validation"] & packages["test"]
    normalised = {s: [match_text(t) for t in table["text"]] for s, table in splits.items()}
    for earlier, later in (("test", "validation"), ("test", "train"), ("validation", "train")):
        seen = "\0".join(f" {t} " for t in normalised[later])
        quoted = [t for t in normalised[earlier] if f" {t} " in seen]
        assert not quoted, (earlier, later, quoted[:3])


def test_builtin_corpus_excludes_test_modules(builtin):
    stats, root = builtin
    corpus = {s: _read(root / "corpus" / f"{s}.parquet") for s in ("train", "validation")}
    sources = corpus["train"]["source"] + corpus["validation"]["source"]
    test = _read(root / "downstream" / "test.parquet")
    assert stats["excluded_test_documents"] == len(set(test["module"])) > 0
    assert not set(test["module"]) & set(sources)
    assert any(s.startswith("pydoc-topic:") for s in sources)
    everything = "\0".join(f" {match_text(t)} " for t in corpus["train"]["text"] + corpus["validation"]["text"])
    validation = _read(root / "downstream" / "validation.parquet")
    leaked = [t for t in test["text"] + validation["text"] if f" {match_text(t)} " in everything]
    assert not leaked, leaked[:3]
    assert stats["held_out_excluded"] > 0
    train_module = _read(root / "downstream" / "train.parquet")["module"][0]
    assert train_module in sources  # train-split modules stay in the corpus


def test_builtin_corpus_stats_and_order(builtin):
    stats, root = builtin
    train = _read(root / "corpus" / "train.parquet")
    val = _read(root / "corpus" / "validation.parquet")
    assert train["doc_id"] == sorted(train["doc_id"]) and val["doc_id"] == sorted(val["doc_id"])
    assert stats["train_documents"] == len(train["doc_id"]) and stats["validation_documents"] == len(val["doc_id"])
    assert stats["documents"] == stats["documents_read"] - stats["duplicates_removed"] - stats["short_removed"]
    assert stats["characters"] == sum(map(len, train["text"] + val["text"])) > 1_000_000
    assert stats["length_p05"] <= stats["length_p50"] <= stats["length_p95"]
    assert all(len(t) >= DataConfig().min_chars for t in train["text"] + val["text"])
    assert pq.read_schema(root / "corpus" / "train.parquet").names == ["doc_id", "source", "text"]


def test_build_is_byte_identical_across_runs(builtin, tmp_path):
    """Built again in another process with another string-hash seed, so no set or dict
    order that varies between runs can reach the output."""
    stats, root = builtin
    code = ("import json, sys; from pathlib import Path; from components.data.corpus import *; "
            "print(json.dumps(build_corpus(DataConfig(), DownstreamConfig(), 1337, Path('corpus'), Path('downstream'))))")
    env = {**os.environ, "PYTHONHASHSEED": "4242"}  # pytest runs under a random one
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == stats
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_subsample_keeps_every_class(builtin):
    _, root = builtin
    table = _read(root / "downstream" / "train.parquet")
    rows = list(zip(table["text"], table["label"], table["module"]))
    small = stdlib_docs.subsample(rows, 20, seed=3)
    assert len(small) == 20 and set(r[1] for r in small) == set(table["label"])
    assert small == stdlib_docs.subsample(rows, 20, seed=3)
    assert small == [r for r in rows if r in small]  # original order kept


GUI = stdlib_docs.CHAPTERS["gui-and-multimedia"]


def test_split_modules_spreads_a_class_with_one_huge_package():
    sizes = {"tkinter": 400, **{f"{top}.m": 10 for top in GUI if top != "tkinter"}}
    split_of = stdlib_docs.split_modules(sizes, 0.15, 0.15, seed=0)
    assert split_of["tkinter"] == "train"
    counts = Counter(split_of.values())
    assert counts["test"] >= 3 and counts["validation"] >= 3
    assert split_of == stdlib_docs.split_modules(dict(reversed(sizes.items())), 0.15, 0.15, seed=0)


def test_split_modules_keeps_each_top_level_package_in_one_split():
    """email.mime and email.parser share names and quote each other: split by module, a
    test example was a near-copy of a training one."""
    sizes = {f"{top}.{sub}": 1 for top in GUI for sub in ("a", "b", "c", "d")}
    sizes.update({top: 1 for top in GUI})
    for seed in range(5):
        split_of = stdlib_docs.split_modules(sizes, 0.3, 0.3, seed=seed)
        by_package: dict[str, set[str]] = {}
        for module, split in split_of.items():
            by_package.setdefault(stdlib_docs.package_of(module), set()).add(split)
        assert all(len(splits) == 1 for splits in by_package.values()), (seed, by_package)
        assert set(split_of.values()) == set(SPLITS)


def _spelled(i: int) -> str:
    return " ".join("zero one two three four five six seven eight nine".split()[int(d)] for d in str(i))


def test_near_duplicate_docstrings_stay_in_one_split():
    """Every package's module quotes the same sentence, in another case, spacing, punctuation
    or number each time: the group is kept once, in the first of test, validation, train."""
    modules = []
    for label, tops in stdlib_docs.CHAPTERS.items():
        for top in tops:
            own = tuple(f"The {top} package, its docstring {_spelled(i)} of the {label} chapter." for i in range(4))
            copy = f"Return  the COUNT ({len(top)}) of items -- see {len(modules)} above"
            modules.append(stdlib_docs.ModuleDocs(top, (*own, copy, copy.lower() + ".")))
    task = stdlib_docs.chapter_examples(modules, 20, 0.3, 0.3, seed=1)  # room for equal-sized packages
    copies = {s: [t for t, _, _ in rows if "count" in t.lower()] for s, rows in task.items()}
    assert copies == {"train": [], "validation": [], "test": copies["test"]} and len(copies["test"]) == 1
    assert all(len(task[s]) > 20 for s in SPLITS)


def test_config_knows_the_builtin_task_class_count():
    from components.config import BUILTIN_TASK_CLASSES

    assert BUILTIN_TASK_CLASSES == len(stdlib_docs.LABELS)
