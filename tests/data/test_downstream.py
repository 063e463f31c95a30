"""A user's downstream task: local CSV / JSONL / Parquet, split directories, datasets dirs, labels."""
from __future__ import annotations

import gzip
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.config import DataConfig, DownstreamConfig
from components.data.corpus import build_corpus
from components.data.downstream import read_task

TEXTS = {"pos": "a fine and pleasant thing number {}", "neg": "an awful and gloomy thing number {}"}


def spelled(i: int) -> str:
    """The number in words: texts that differ only in digits are near-duplicates (clean.match_text)."""
    return " ".join("zero one two three four five six seven eight nine".split()[int(d)] for d in str(i))


def rows(n: int, labels=("pos", "neg"), start: int = 0) -> list[dict]:
    return [{"text": TEXTS[labels[i % len(labels)]].format(spelled(i)), "label": labels[i % len(labels)]}
            for i in range(start, start + n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read(task, labels="", **kw):
    return read_task(str(task), kw.get("text_column", "text"), kw.get("label_column", "label"), labels, 0.2, 0.2, 7)


def test_single_csv_is_split_by_fraction_stratified_and_seeded(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows(100)).to_csv(path, index=False)
    task, labels = read(path)
    assert labels == ["neg", "pos"]  # sorted training labels
    assert {s: len(r) for s, r in task.items()} == {"train": 60, "validation": 20, "test": 20}
    for split in task.values():  # stratified: both classes, equally
        assert sorted(label for _, label, _ in split).count(0) * 2 == len(split)
    texts = [{t for t, _, _ in task[s]} for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert read(path)[0] == task  # same seed, same split
    assert task["test"][0][2].startswith(f"{path}, line ")  # each row keeps its origin


def test_split_directory_of_jsonl_with_integer_labels(tmp_path):
    d = tmp_path / "task"
    d.mkdir()
    labelled = [{"body": r["text"], "y": i % 3} for i, r in enumerate(rows(30))]
    write_jsonl(d / "train.jsonl", labelled[:20])
    write_jsonl(d / "dev.jsonl", labelled[20:25])
    write_jsonl(d / "test.jsonl", labelled[25:])
    task, labels = read(d, text_column="body", label_column="y")
    assert labels == ["0", "1", "2"]
    assert [len(task[s]) for s in ("train", "validation", "test")] == [20, 5, 5]
    assert [label for _, label, _ in task["validation"]] == [i % 3 for i in range(20, 25)]


def test_parquet_with_explicit_label_order_and_carved_validation(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pd.DataFrame(rows(40)).to_parquet(d / "train.parquet")
    pd.DataFrame(rows(10, start=40)).to_parquet(d / "test.parquet")
    task, labels = read(d, labels="pos, neg")
    assert labels == ["pos", "neg"]
    assert len(task["test"]) == 10 and len(task["validation"]) == 8 and len(task["train"]) == 32
    assert task["test"][0][1] == 0  # "pos" is id 0 as the param orders it


def test_saved_datasetdict_uses_its_classlabel_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["sports", "science"])})
    data = [{"text": f"story {spelled(i)} about {'goals' if i % 2 else 'atoms'}", "label": i % 2} for i in range(30)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(data[:20], features=features),
                               "test": datasets.Dataset.from_list(data[20:], features=features)})
    dd.save_to_disk(str(tmp_path / "saved"))
    task, labels = read(tmp_path / "saved")
    assert labels == ["sports", "science"]
    assert len(task["test"]) == 10 and len(task["validation"]) == 4


def test_hf_prefix_reads_a_local_dataset_directory_offline(tmp_path):
    pytest.importorskip("datasets")
    d = tmp_path / "hub-like"
    d.mkdir()
    pd.DataFrame(rows(30)).to_csv(d / "train.csv", index=False)
    pd.DataFrame(rows(10, start=30)).to_csv(d / "test.csv", index=False)
    task, labels = read(f"hf:{d}")
    assert labels == ["neg", "pos"] and len(task["test"]) == 10 and len(task["train"]) == 24


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ({"text": "x y z"}, r"line 3: no field 'label' .*set downstream.label_column"),
        ({"text": "x y z", "label": None}, r"line 3: missing label in 'label'"),
        ({"text": "x y z", "label": 1.5}, r"line 3: label in 'label' must be a string or an integer, got float"),
        ({"text": "", "label": "pos"}, r"line 3: 'text' must be a non-empty string, got an empty text"),
        ({"text": ["a"], "label": "pos"}, r"line 3: 'text' must be a non-empty string, got a list"),
        ({"text": "x y z", "label": "meh"}, r"line 3: label 'meh' is not in the label set \(pos, neg\); add it to "),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, line3, message):
    path = write_jsonl(tmp_path / "task.jsonl", [*rows(2), line3, *rows(20)])
    with pytest.raises(ValueError, match=message) as err:
        read(path, labels="pos,neg")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_json_task_wrapped_in_an_object_names_item_and_line(tmp_path):
    path = tmp_path / "task.json.gz"
    records = rows(30)
    records[17] = {"text": "x y z", "label": "meh"}
    body = json.dumps({"version": 1, "rows": records, "n": [1]}, indent=1)
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + body.encode("utf-8"), mtime=0))  # BOM and gzip
    line = next(i for i, text in enumerate(body.splitlines(), 1) if text.strip() == '"text": "x y z",') - 1
    with pytest.raises(ValueError, match=rf"task\.json\.gz, item 17 \(line {line}\): label 'meh' is not in"):
        read(path, labels="pos,neg")
    records[17] = rows(18)[17]
    path.write_bytes(gzip.compress(json.dumps({"rows": records}).encode("utf-8"), mtime=0))
    task, _ = read(path)
    assert sum(map(len, task.values())) == 30
    assert all(origin.startswith(f"{path}, item ") for split in task.values() for _, _, origin in split)


def test_label_only_in_test_split_is_an_error_naming_the_row(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    pd.DataFrame(rows(20)).to_csv(d / "train.csv", index=False)
    pd.DataFrame(rows(4) + [{"text": "mixed feelings", "label": "neutral"}]).to_csv(d / "test.csv", index=False)
    with pytest.raises(ValueError, match=r"test.csv, line 6: label 'neutral' is not in the label set .*training split"):
        read(d)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "other.csv").write_text("text,label\na,b\n"), r"not named by split"),
        (lambda d: pd.DataFrame(rows(10, labels=("pos",))).to_csv(d / "train.csv", index=False),
         r"needs at least 2"),
        (lambda d: pd.DataFrame(rows(3)).to_csv(d / "train.csv", index=False), r"split is empty"),
    ],
)
def test_unusable_tasks_fail_with_the_fix(tmp_path, setup, message):
    d = tmp_path / "t"
    d.mkdir()
    setup(d)
    with pytest.raises(ValueError, match=message):
        read(d)


def test_missing_task_path_names_the_param(tmp_path):
    with pytest.raises(ValueError, match=r"downstream.task: .* does not exist"):
        read(tmp_path / "nope.csv")


def test_build_corpus_writes_a_users_task_and_labels_and_refuses_bad_ones_whole(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}. " + "Some words of prose here. " * 20)
    task_file = tmp_path / "task.csv"
    pd.DataFrame(rows(50)).to_csv(task_file, index=False)
    data = DataConfig(source=str(corpus))
    out = tmp_path / "out"
    stats = build_corpus(data, DownstreamConfig(task=str(task_file)), 3, out / "corpus", out / "downstream")
    assert stats["downstream_classes"] == 2 and stats["downstream_train"] == 34  # 15% + 15% of 25 per class held out
    assert json.loads((out / "downstream" / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    table = pq.read_table(out / "downstream" / "test.parquet").to_pydict()
    assert set(table["label"]) == {0, 1} and len(table["text"]) == 8

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine words,pos\nmore words,\n", encoding="utf-8")
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match=r"bad.csv, line 3: missing label"):
        build_corpus(data, DownstreamConfig(task=str(bad)), 3, fresh / "corpus", fresh / "downstream")
    assert not fresh.exists() or not any(fresh.iterdir())  # nothing half-written


def test_given_splits_that_share_texts_keep_each_in_the_first_of_test_validation_train(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    train, validation, test = rows(40), rows(10, start=40), rows(10, start=50)
    train[3]["text"] = test[0]["text"].upper()  # the same text but for case: still a copy
    train[5]["text"] = validation[1]["text"] + " (2)"  # ... or punctuation and digits
    validation[2]["text"] = " ".join(test[4]["text"].split()[::-1])  # other words: not a copy
    validation[6]["text"] = test[7]["text"]
    for name, split in (("train", train), ("dev", validation), ("test", test)):
        write_jsonl(d / f"{name}.jsonl", split)
    counts = {}
    task, _ = read_task(str(d), "text", "label", "", 0.2, 0.2, 7, counts)
    assert counts == {"downstream_overlap_removed": 3}
    assert [len(task[s]) for s in ("train", "validation", "test")] == [38, 9, 10]
    assert_no_text_in_two_splits(task)


def assert_no_text_in_two_splits(task):
    from components.data.clean import match_text

    keys = {s: {match_text(t) for t, _, _ in split} for s, split in task.items()}
    assert not (keys["train"] & keys["validation"] or keys["train"] & keys["test"]
                or keys["validation"] & keys["test"])


def test_carved_splits_take_near_duplicates_as_one_group(tmp_path):
    path = tmp_path / "task.jsonl"
    records = rows(60)
    for i in range(0, 60, 3):  # every third text twice more, in other case, spacing and digits
        records += [{"text": records[i]["text"].upper() + " 1", "label": records[i]["label"]},
                    {"text": "  " + records[i]["text"] + "!! 22", "label": records[i]["label"]}]
    write_jsonl(path, records)
    for seed in range(4):
        task, _ = read_task(str(path), "text", "label", "", 0.2, 0.2, seed)
        assert sum(map(len, task.values())) == 100
        assert_no_text_in_two_splits(task)
        assert all(len(task[s]) >= 15 for s in ("validation", "test"))


def test_a_users_validation_and_test_texts_are_kept_out_of_the_corpus(tmp_path):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    train, validation, test = rows(40), rows(10, start=40), rows(10, start=50)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        write_jsonl(task_dir / f"{name}.jsonl", split)
    prose = "Some words of prose here that are long enough to keep. " * 3
    corpus = [{"text": f"{prose} {spelled(i)}"} for i in range(20)]
    corpus += [{"text": test[0]["text"].title() + " 7"},  # a test text, near-duplicate
               {"text": prose + "\n\n" + validation[3]["text"]},  # a validation text as a paragraph
               {"text": "Intro line.\n" + test[2]["text"] + "\nOutro line."},  # ... as a line
               {"text": train[0]["text"]},  # a training text may be pretrained on
               {"text": prose + " and " + test[5]["text"]}]  # inside a line: an 8-word text, matched whole
    write_jsonl(tmp_path / "corpus.jsonl", corpus)
    out = tmp_path / "out"
    stats = build_corpus(DataConfig(source=str(tmp_path / "corpus.jsonl"), min_chars=10),
                         DownstreamConfig(task=str(task_dir)), 3, out / "corpus", out / "downstream")
    assert stats["held_out_excluded"] == 3 and stats["decontaminated_documents_dropped"] == 1
    assert stats["documents"] == 21
    texts = [t for s in ("train", "validation") for t in pq.read_table(out / "corpus" / f"{s}.parquet")["text"].to_pylist()]
    assert train[0]["text"] in texts
    assert not any(t["text"] in doc for t in (test[0], validation[3], test[2], test[5]) for doc in texts)
