"""Corpus sources: every file format (plain and gzip), directories, globs, save_to_disk
directories and `hf:` datasets, read from files the tests write."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import DataConfig
from components.data import formats
from components.data.clean import clean_text
from components.data.corpus import prepare_documents
from components.data.sources import read_documents
from components.data.split import write_splits

DOCS = [
    "First document: plain English prose, long enough to keep.",
    "Second one, with \"quotes\", commas, and a line break\nin the middle.",
    "第三个文档：中文文本也可以，含有标点符号。",
]


def texts(source, column="text", mode="file") -> list[str]:
    return [text for _, text in read_documents(str(source), column, mode)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def gzip_copy(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    return out


@pytest.fixture
def each_format(tmp_path) -> dict[str, Path]:
    """The same three documents as .txt (paragraphs), .jsonl, .json, .csv and .parquet."""
    records = [{"id": i, "body": t} for i, t in enumerate(DOCS)]
    files = {
        ".txt": tmp_path / "docs.txt",
        ".jsonl": write_jsonl(tmp_path / "docs.jsonl", records),
        ".json": tmp_path / "docs.json",
        ".csv": write_csv(tmp_path / "docs.csv", records),
        ".parquet": tmp_path / "docs.parquet",
    }
    files[".txt"].write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    files[".json"].write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    pq.write_table(pa.table({"body": DOCS, "id": [0, 1, 2]}), files[".parquet"], row_group_size=2)
    return files


@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", ".parquet"])
def test_each_format_reads_the_text_column(each_format, fmt):
    got = list(read_documents(str(each_format[fmt]), "body"))
    assert [text for _, text in got] == DOCS
    assert len({source for source, _ in got}) == 3  # each document has its own source id


@pytest.mark.parametrize("fmt", [".txt", ".jsonl", ".json", ".csv"])
def test_gzip_variants_read_like_the_plain_file(each_format, fmt):
    plain = each_format[fmt]
    packed = gzip_copy(plain)
    plain_docs = list(read_documents(str(plain), "body", "paragraph"))
    packed_docs = list(read_documents(str(packed), "body", "paragraph"))
    assert [t for _, t in packed_docs] == [t for _, t in plain_docs] and len(plain_docs) == 3
    assert packed_docs[0][0].startswith(str(packed))


def test_txt_one_document_per_file_or_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("\ufeffOne\r\nstill one\r\n \t\r\n\r\nTwo\n\n\n\nThree".encode("utf-8"))
    assert texts(path) == ["One\r\nstill one\r\n \t\r\n\r\nTwo\n\n\n\nThree"]  # the BOM is dropped
    got = list(read_documents(str(path), "text", "paragraph"))
    assert got == [(f"{path}:1", "One\r\nstill one\r\n"), (f"{path}:5", "Two\n"), (f"{path}:9", "Three")]


def test_json_object_with_a_list_and_a_large_array_across_chunks(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 2, "rows": [{"text": t} for t in DOCS], "n": [1, 2]}), encoding="utf-8")
    assert texts(wrapped) == DOCS
    # One line, 1.5 MB: items and multi-byte characters straddle the reader's 64 KiB chunks.
    big = [{"text": f"{i} " + "数据" * 120 + "x" * (i % 7), "n": 1.5e3} for i in range(2500)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big, ensure_ascii=False), encoding="utf-8")
    assert path.stat().st_size > formats.CHUNK_BYTES
    got = list(read_documents(str(path), "text"))
    assert [t for _, t in got] == [r["text"] for r in big]
    assert got[2499][0] == f"{path}[2499]"
    # Indented, with a bad item deep in the file: the line is counted across chunks.
    big[2400] = {"body": "x"}
    path.write_text(json.dumps(big, ensure_ascii=False, indent=0), encoding="utf-8")
    line = path.read_text(encoding="utf-8").splitlines().index('"body": "x"')  # 1-based: the "{" above
    with pytest.raises(ValueError, match=rf"big\.json, item 2400 \(line {line}\): no field 'text'"):
        list(read_documents(str(path), "text"))


@pytest.mark.parametrize("content, fragment", [
    ('[{"text": "a"}, {"text": "b"', "big.json, line 1: not valid JSON (the file ends inside it: truncated?)"),
    ('[{"text": "a"},\n {"text": "b"}\n', "big.json, line 2: not valid JSON (the file ends inside it: truncated?)"),
    ('[{"text": "a"},\n {"text": oops}]', "big.json, line 2: not valid JSON (lexical error: invalid char in json text"),
    ('[{"text": "a"},\n {"n": NaN}]', "big.json, line 2: not valid JSON"),
    ('[\n{"text": "caf\u00e9"},\n\u00e9]', "big.json, line 3: not valid JSON"),
    ('\n \n', "big.json, line 2: expected a JSON array of objects, or an object holding such a list (the file is empty)"),
    ('[{"text": "a"}]\n[{"text": "b"}]', "big.json, line 2: extra data after the JSON value; one JSON value per line?"),
    ('{"meta": {"n": 1}}', "holds no list of records"),
    ('"just a string"', "expected a JSON array of objects"),
    ('[{"text": "a"}, ["text"]]', "big.json, item 1 (line 1): expected a JSON object"),
    ('[{"text": "a"},\n\n {"body": "b"}]', "big.json, item 1 (line 3): no field 'text' (fields: body); set data.text_column"),
])
def test_bad_json_names_file_and_line(tmp_path, content, fragment):
    (tmp_path / "big.json").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        list(read_documents(str(tmp_path / "big.json"), "text"))
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("bad, fragment", [(b'{"text": "nul \x00"},', "NUL byte"),
                                            (b'{"text": "caf\xe9"},', "not UTF-8; convert it to UTF-8")])
def test_json_bad_bytes_past_the_sniffed_head_are_named_by_line(tmp_path, bad, fragment):
    good = [json.dumps({"text": f"document {i} " + "x" * 100}).encode() + b"," for i in range(200)]
    path = tmp_path / "late.json"
    path.write_bytes(b"\n".join([b"[", *good, bad, b'{"text": "end"}]']))
    assert path.stat().st_size > 2 * 8192  # past what sniff() reads
    with pytest.raises(ValueError, match=rf"late\.json, line 202: {fragment}"):
        texts(path)


def test_csv_quoted_newlines_long_fields_and_line_numbers(tmp_path):
    long = "word " * 40_000  # 200 KB: over csv's default field limit
    path = write_csv(tmp_path / "d.csv", [{"text": DOCS[1], "n": 1}, {"text": long, "n": 2}])
    got = list(read_documents(str(path), "text"))
    assert got == [(f"{path}:3", DOCS[1]), (f"{path}:4", long)]  # the record's last line
    (tmp_path / "ragged.csv").write_text("n,text\n1,fine text\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ragged\.csv, line 3: 1 fields, the header has 2"):
        texts(tmp_path / "ragged.csv")
    with pytest.raises(ValueError, match=r"d\.csv, line 1: no column 'body' in the header \(text, n\)"):
        texts(path, "body")


def test_directory_reads_every_supported_file_and_skips_others(each_format, tmp_path, capsys):
    (tmp_path / "README.md").write_text("not corpus text", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("git internals", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    shutil.move(gzip_copy(each_format[".jsonl"]), tmp_path / "sub" / "more.jsonl.gz")
    got = list(read_documents(str(tmp_path), "body", "paragraph"))
    assert len(got) == 6 * 3
    assert got[0][0] == f"{tmp_path}/docs.csv:2" and got[-1][0] == f"{tmp_path}/sub/more.jsonl.gz:3"
    assert "skipped 1 file(s) of other types, e.g. " in capsys.readouterr().err
    assert len(list(read_documents(str(tmp_path / "**" / "*.jsonl*"), "body"))) == 6


def test_gzip_that_is_not_gzip_and_parquet_that_is_not_parquet(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_text('{"text": "plain"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"fake\.jsonl\.gz: not a valid gzip file .*drop the \.gz suffix"):
        texts(tmp_path / "fake.jsonl.gz")
    (tmp_path / "fake.parquet").write_text("text", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable parquet file"):
        texts(tmp_path / "fake.parquet")


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    single = datasets.Dataset.from_dict({"text": DOCS, "n": [1, 2, 3]})
    single.save_to_disk(str(tmp_path / "single"))
    got = list(read_documents(str(tmp_path / "single"), "text"))
    assert got == [(f"{tmp_path / 'single'}:{i}", t) for i, t in enumerate(DOCS)]

    other = datasets.Dataset.from_dict({"text": ["held-out text"], "n": [0]})
    datasets.DatasetDict({"train": single, "test": other}).save_to_disk(str(tmp_path / "dict"))
    assert texts(tmp_path / "dict") == DOCS  # the train split
    datasets.DatasetDict({"test": other}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match=r"no_train: no 'train' split \(has test\)"):
        texts(tmp_path / "no_train")
    with pytest.raises(ValueError, match=r"single: column 'n' must hold strings"):
        texts(tmp_path / "single", "n")


def test_hf_source_streams_a_dataset_repository(tmp_path, monkeypatch):
    """`hf:<name>` goes through datasets.load_dataset(streaming=True); a dataset repository
    on disk takes the same path as one on the Hub, without a network."""
    datasets = pytest.importorskip("datasets")
    # datasets read HF_HOME when first imported: point its cache (lock files) at tmp_path.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    repo = tmp_path / "my-corpus"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", [{"text": t, "n": i} for i, t in enumerate(DOCS)])
    source = f"hf:{repo}"
    got = list(read_documents(source, "text"))
    assert got == [(f"{source}:{i}", t) for i, t in enumerate(DOCS)]
    with pytest.raises(ValueError, match=r"no column 'body' \(has text, n\); set data.text_column"):
        list(read_documents(source, "body"))


def test_hf_source_needs_a_name():
    with pytest.raises(ValueError, match=r"data.source: 'hf:' names no dataset"):
        DataConfig(source="hf:")
    with pytest.raises(ValueError, match="data.txt_mode must be one of file, paragraph"):
        DataConfig(txt_mode="line")


def test_chinese_corpus_goes_through_unchanged(tmp_path):
    paragraphs = [
        "机器学习是人工智能的一个分支，它研究计算机怎样模拟人类的学习行为。",
        "清晨的湖面上笼罩着一层薄雾，远处的山峦若隐若现。\n渔民们早已划着小船出发。",
        "深度学习使用多层神经网络，从大量数据中自动学习特征表示。",
    ]
    path = tmp_path / "zh.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    docs, counts = prepare_documents(read_documents(str(path), "text", "paragraph"), min_chars=10)
    assert counts == {"documents_read": 3, "duplicates_removed": 0, "short_removed": 0}
    out = tmp_path / "corpus"
    out.mkdir()
    write_splits(iter(docs), out, 0.3, 0)
    written = [t for split in ("train", "validation") for t in pq.read_table(out / f"{split}.parquet")["text"].to_pylist()]
    assert sorted(written) == sorted(paragraphs)
    assert all(clean_text(p) == p for p in paragraphs)
