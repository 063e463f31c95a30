"""Property tests (hypothesis) over the ingest parsers and the params loader.

Whatever the bytes, a reader either yields (source, str or None) pairs or raises a one-line
ValueError that names the file; whatever the params.yaml, the loader either returns typed
configs or raises a one-line ConfigError. Never another exception, never a hang. Valid
input round-trips exactly, across the JSON reader's chunk boundaries too.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from components.config import SECTIONS
from components.data import formats, sources
from components.params import ConfigError, load_params

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text a document may hold: any code point but surrogates (not encodable as UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read(path: Path, column: str = "text", txt_mode: str = "file") -> list[tuple[str, object]]:
    return list(sources.read_documents(str(path), column, txt_mode))


def _read_or_refuse(path: Path, **kw) -> list | None:
    """The documents, or None when the reader refused the file in one line naming it."""
    try:
        docs = _read(path, **kw)
    except ValueError as e:
        message = str(e)
        assert "\n" not in message, message
        assert str(path) in message, message
        return None
    for source, text in docs:
        assert isinstance(source, str) and (text is None or isinstance(text, str))
    return docs


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]),
       compress=st.booleans())
@example(data=b"\r\x01", suffix=".csv", compress=False)  # found by this test: a bad header row raised csv.Error
def test_any_bytes_are_read_or_refused_in_one_line(work, data, suffix, compress):
    path = work / f"any{suffix}{'.gz' if compress else ''}"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    _read_or_refuse(path)
    _read_or_refuse(path, txt_mode="paragraph")


# JSON-ish lines: valid and broken records, odd field names and types.
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=6)
RECORD = st.dictionaries(st.sampled_from(["text", "body", "", "te\nxt", "id"]) | TEXT, JSON_VALUE, max_size=4)


@FUZZ
@example(lines=['{"te\\nxt": null}'])  # found by this test: a field name with a newline broke the one line
@given(lines=st.lists(st.one_of(RECORD.map(json.dumps), JSON_VALUE.map(json.dumps), TEXT), max_size=6))
def test_jsonl_with_missing_or_wrong_typed_fields_is_refused_by_line(work, lines):
    path = work / "records.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = _read_or_refuse(path)
    if docs is not None:  # every non-blank line was an object with a string or null text
        records = [json.loads(line) for line in lines if line.strip()]
        assert [text for _, text in docs] == [r["text"] for r in records]


@FUZZ
@given(texts=st.lists(TEXT, max_size=8), chunk=st.integers(1, 64), wrap=st.booleans(),
       indent=st.sampled_from([None, 1]))
def test_json_array_round_trips_across_any_chunk_size(work, texts, chunk, wrap, indent):
    path = work / "array.json"
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    path.write_text(json.dumps({"meta": {"n": len(texts)}, "rows": records} if wrap else records, indent=indent),
                    encoding="utf-8")
    with mock.patch.object(formats, "CHUNK_BYTES", chunk):
        assert [text for _, text in _read(path)] == texts


@FUZZ
@given(texts=st.lists(TEXT, max_size=8))
def test_jsonl_and_csv_round_trip(work, texts):
    jsonl = work / "rt.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert [text for _, text in _read(jsonl)] == texts
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text"])
    texts = [t.replace("\0", "") for t in texts]  # a raw NUL marks a binary file: refused by design
    writer.writerows([i, t] for i, t in enumerate(texts))
    path = work / "rt.csv"
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    assert [text for _, text in _read(path)] == texts


@FUZZ
@given(paragraphs=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                                   min_size=1, max_size=30).filter(str.strip), max_size=6))
def test_txt_paragraph_mode_splits_on_blank_lines(work, paragraphs):
    path = work / "paras.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    assert [text.rstrip("\n") for _, text in _read(path, txt_mode="paragraph")] == paragraphs


# The params loader.

def _fields() -> dict[str, list[str]]:
    import dataclasses

    return {s: [f.name for f in dataclasses.fields(SECTIONS[s])] for s in SECTIONS}


FIELDS = _fields()
SCALAR = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=12) | st.lists(st.integers(), max_size=2))


@st.composite
def params_trees(draw):
    tree = {}
    odd_names = st.sampled_from(["pretrian", "a\nb", "", 1, 2.5, True, None])
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "profile", "seed"]) | odd_names, unique=True,
                                 max_size=4)):
        if section == "profile":
            tree[section] = draw(st.sampled_from(["tiny", "demo", "gpu-small", "huge", 3]))
        elif section == "seed":
            tree[section] = draw(SCALAR)
        else:
            keys = st.sampled_from(FIELDS.get(section, ["x"])) | st.text(max_size=8) | odd_names
            tree[section] = draw(st.dictionaries(keys, SCALAR, max_size=4) | SCALAR)
    return tree


def _load_or_refuse(path: Path) -> None:
    try:
        load_params(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(("params.yaml", str(path))), str(e)


@FUZZ
@given(tree=params_trees())
@example(tree={"pretrain": {"a\nb": 1}})  # found by this test: a key with a newline broke the one line
@example(tree={"data": {1: 2, "b": 1}})  # found by this test: mixed key types raised TypeError
def test_params_are_loaded_or_refused_in_one_line(work, tree):
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    _load_or_refuse(path)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_params_text_is_loaded_or_refused_in_one_line(work, text):
    path = work / "params.yaml"
    path.write_text(text, encoding="utf-8")
    _load_or_refuse(path)
