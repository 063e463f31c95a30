"""Decontamination: a corpus that quotes downstream validation and test texts in any form
loses those passages before a tokenizer or a pretraining run sees it, for the built-in task
and for a user's task."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from components.config import DataConfig, DownstreamConfig
from components.data.corpus import build_corpus
from components.data.decontaminate import HeldOutIndex, Report, cut, decontaminate, words

LONG = ("Return a new dictionary mapping every registered codec name to the callable that decodes "
        "its bytes, or raise LookupError when the name is unknown to the registry.")
MEDIUM = "Close the underlying socket and release every buffered frame now."  # 10 words
SHORT = "Flush the write buffer."  # 4 words: below the 8-word floor
PROSE = "Unrelated text about gardens, rivers and the weather in spring, long enough to stay."


def forms(text: str) -> dict[str, str]:
    """The copies item 2 names: verbatim, re-cased, re-spaced (and re-punctuated), inside a longer document."""
    return {"verbatim": text,
            "recased": text.upper(),
            "respaced": "  ".join(text.replace(",", " ,").split(" ")).replace(" the ", "\nthe\t"),
            "inside": f"{PROSE}\n\n{PROSE} As the manual says: {text.lower()} And so on.\n\n{PROSE}"}


def assert_clean(text: str, held_out: list[str], n: int = 13, min_words: int = 8) -> None:
    ws = words(text)
    for h in held_out:
        hw = words(h)
        if len(hw) < min_words:
            continue
        k = min(n, len(hw))
        grams = {tuple(hw[i:i + k]) for i in range(len(hw) - k + 1)}
        assert not any(tuple(ws[i:i + k]) in grams for i in range(len(ws) - k + 1)), (h, text)


@pytest.mark.parametrize("held", [LONG, MEDIUM])
def test_every_form_of_a_held_out_text_is_cut(held):
    index = HeldOutIndex([held])
    for form, text in forms(held).items():
        kept, matched = cut(text, index)
        assert matched, form
        assert_clean(kept, [held])
        if form == "inside":  # only the paragraph holding the copy goes
            assert kept == f"{PROSE}\n\n{PROSE}"


def test_a_part_of_a_long_text_is_enough_and_unrelated_text_stays():
    index = HeldOutIndex([LONG])
    part = " ".join(LONG.split()[5:19])  # 14 of its words, mid-sentence
    assert cut(f"{PROSE} {part}", index)[0] == ""
    assert cut(PROSE, index) == (PROSE, [])
    twelve = " ".join(LONG.split()[:12])  # shorter than a 13-gram: not a match
    assert cut(twelve, index) == (twelve, [])


def test_a_text_under_the_floor_is_cut_only_as_a_whole_line():
    index = HeldOutIndex([SHORT])
    assert cut(f"{PROSE}\n{SHORT.lower()}", index)[0] == ""  # a line of its own: its paragraph goes
    inside = f"{PROSE} To flush the write buffer, call it."
    assert cut(inside, index) == (inside, [])


def test_decontaminate_counts_what_it_removed():
    report = Report()
    raw = [("a", PROSE), ("b", f"{PROSE}\n\n{LONG}"), ("c", LONG.upper()), ("d", None)]
    out = list(decontaminate(raw, HeldOutIndex([LONG]), report))
    assert out == [("a", PROSE), ("b", PROSE), ("d", None)]
    assert (report.documents_dropped, report.documents_cut) == (1, 1)
    assert report.characters_removed == 2 * len(LONG) + 2
    assert [e["source"] for e in report.examples] == ["b", "c"]


def test_floor_and_ngram_are_checked():
    with pytest.raises(ValueError, match="decontaminate_min_words"):
        DataConfig(decontaminate_min_words=14)
    with pytest.raises(ValueError, match="decontaminate_ngram"):
        DataConfig(decontaminate_ngram=0)


def _corpus_texts(out) -> list[str]:
    return [t for s in ("train", "validation") for t in pq.read_table(out / "corpus" / f"{s}.parquet")["text"].to_pylist()]


def _quoting_corpus(path, held_out: list[str]) -> None:
    docs = [{"text": f"{PROSE} number {i}."} for i in range(30)]
    for h in held_out:
        docs += [{"text": text} for text in forms(h).values()]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")


def test_a_users_corpus_quoting_the_builtin_tasks_held_out_texts(tmp_path):
    probe = tmp_path / "probe"
    build_corpus(DataConfig(max_documents=5), DownstreamConfig(), 1337, probe / "corpus", probe / "downstream")
    held = [t for s in ("validation", "test")
            for t in pq.read_table(probe / "downstream" / f"{s}.parquet")["text"].to_pylist()]
    quoted = [t for t in held if len(words(t)) >= 13][:3] + [t for t in held if 8 <= len(words(t)) < 13][:3]
    _quoting_corpus(tmp_path / "corpus.jsonl", quoted)
    out = tmp_path / "out"
    stats = build_corpus(DataConfig(source=str(tmp_path / "corpus.jsonl")), DownstreamConfig(), 1337,
                         out / "corpus", out / "downstream")
    texts = _corpus_texts(out)
    for text in texts:
        assert_clean(text, held)
    removed = stats["decontaminated_documents_dropped"] + stats["decontaminated_documents_cut"]
    assert removed + stats["held_out_excluded"] == 4 * len(quoted)
    assert sum(t.startswith(f"{PROSE} number") for t in texts) == 30
    assert f"{PROSE}\n\n{PROSE}" in texts  # an "inside" document keeps its other paragraphs


def test_a_users_corpus_quoting_a_users_tasks_held_out_texts(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    topics = ["the parser rejects any header line that is longer than the configured limit of bytes",
              "a worker process restarts after it has handled a fixed number of requests in total",
              "the cache entry expires once its time to live has elapsed since the last write"]
    for split, start in (("train", 0), ("validation", 100), ("test", 200)):
        rows = [{"text": f"{topics[i % 3]} variant {chr(97 + i)}{chr(97 + start // 100)}", "label": f"l{i % 3}"}
                for i in range(12)]
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    held = [json.loads(line)["text"] for s in ("validation", "test") for line in (task / f"{s}.jsonl").open()]
    _quoting_corpus(tmp_path / "corpus.jsonl", held[:1] + held[12:13])
    out = tmp_path / "out"
    stats = build_corpus(DataConfig(source=str(tmp_path / "corpus.jsonl")), DownstreamConfig(task=str(task)), 3,
                         out / "corpus", out / "downstream")
    for text in _corpus_texts(out):
        assert_clean(text, held)
        assert not any(topic in text.lower() for topic in topics)
    assert stats["decontaminated_documents_dropped"] + stats["decontaminated_documents_cut"] > 0


def test_the_builtin_corpus_keeps_no_held_out_ngram(tmp_path):
    out = tmp_path / "out"
    stats = build_corpus(DataConfig(), DownstreamConfig(), 1337, out / "corpus", out / "downstream")
    held = [t for s in ("validation", "test") for t in pq.read_table(out / "downstream" / f"{s}.parquet")["text"].to_pylist()]
    index = HeldOutIndex(held)
    assert not any(index.spans(t) for t in _corpus_texts(out))
    assert stats["decontaminated_documents_cut"] > 0  # docstrings that quote a held-out 13-gram in passing
