"""A user's downstream classification task: local labelled files or a Hugging Face dataset.

``downstream.task`` names one of:

- a ``.csv`` / ``.jsonl`` / ``.json`` (each optionally ``.gz``) or ``.parquet`` file: its rows
  are split into train / validation / test by ``downstream.validation_fraction`` and
  ``test_fraction``, stratified by label and seeded;
- a directory or glob of such files, named by split (``train*``, ``validation*`` /
  ``valid*`` / ``dev*`` / ``val*``, ``test*``): a split without files is carved from train
  the same way;
- a ``datasets`` ``save_to_disk`` directory, or ``hf:<name>[:<config>]`` (needs the Hub or
  the local datasets cache): its splits, with the same names and the same carving.

Each row has a text (``downstream.text_column``) and a label (``downstream.label_column``;
a string, an integer, or a ``ClassLabel`` id whose names are used). The label set is
``downstream.labels`` (comma-separated, in order) when given, else the ``ClassLabel`` names,
else the sorted labels of the training split. A missing or empty text, a missing or
wrong-typed label, or a label outside the set is a one-line error naming the file and line.

No text is in two splits, compared as ``clean.match_text`` does (case, spacing,
punctuation and numbers ignored). Splits the task gives keep priority test, then
validation, then train: a text of a later split that repeats one of an earlier split is
dropped from the later one (the test set is the benchmark, so it stays whole; training
loses the copies), counted in ``downstream_overlap_removed``. Carved splits take
near-duplicates as one group, so a group never straddles two.
"""
from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any, Iterator

from components.data import hub, sources
from components.data.clean import match_key

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}

Row = tuple[str, str, str]
"""(where, text, label name) as read, before labels become ids."""


PRIORITY = ("test", "validation", "train")
"""Which split keeps a text that two given splits share: the first here."""


def read_task(task: str, text_column: str, label_column: str, labels_param: str,
              validation_fraction: float, test_fraction: float, seed: int,
              counts: dict | None = None) -> tuple[dict[str, list], list[str]]:
    """({split: [(text, label id, origin)]}, label names) for `task`; see the module doc.

    The rows dropped for repeating an earlier split's text are added to
    counts["downstream_overlap_removed"] when `counts` is given."""
    raw, class_names = _read_splits(task, text_column, label_column)
    if not raw.get("train"):
        raise ValueError(f"downstream.task {task!r}: no training rows; give a train split or a single file")
    labels = _label_set(labels_param, class_names, raw["train"])
    for split_rows in raw.values():
        _check_labels(split_rows, labels, labels_param)
    removed = _drop_overlaps(raw)
    if counts is not None:
        counts["downstream_overlap_removed"] = counts.get("downstream_overlap_removed", 0) + removed
    fractions = {"validation": validation_fraction, "test": test_fraction}
    missing = [s for s in ("validation", "test") if s not in raw]
    if missing:
        raw["train"], carved = _carve(raw["train"], {s: fractions[s] for s in missing}, seed)
        raw.update(carved)
    index = {name: i for i, name in enumerate(labels)}
    out = {s: [(text, index[label], where) for where, text, label in raw[s]] for s in SPLITS}
    for split, split_rows in out.items():
        if not split_rows:
            raise ValueError(f"downstream.task {task!r}: the {split} split is empty; give more rows or raise "
                             f"downstream.{split}_fraction" if split != "train" else
                             f"downstream.task {task!r}: nothing left to train on; lower the held-out fractions")
    return out, labels


def _read_splits(task: str, text_column: str, label_column: str) -> tuple[dict[str, list[Row]], list[str] | None]:
    if task.startswith(hub.HF_PREFIX) or hub.is_saved_dataset(Path(task)):
        return _read_dataset(task, text_column, label_column)
    files, _skipped = sources.local_files(task, "downstream.task", "builtin:stdlib-chapters")
    if len(files) == 1 and not Path(task).is_dir() and not glob.has_magic(task):
        return {"train": list(_rows(files[0], text_column, label_column))}, None
    by_split: dict[str, list[Row]] = {}
    unnamed = []
    for path in files:
        split = _split_of(path)
        if split is None:
            unnamed.append(path)
            continue
        by_split.setdefault(split, []).extend(_rows(path, text_column, label_column))
    if unnamed:
        raise ValueError(f"downstream.task: {unnamed[0]} is not named by split; name files train*, validation* "
                         "(or valid*, dev*, val*) and test*, or give a single file to split")
    return by_split, None


def _split_of(path: Path) -> str | None:
    stem = path.name.lower().split(".")[0]
    for split, names in SPLIT_ALIASES.items():
        if any(stem == n or stem.startswith((n + "_", n + "-")) for n in names):
            return split
    return None


def _rows(path: Path, text_column: str, label_column: str) -> Iterator[Row]:
    for where, record in sources.iter_records(path):
        yield _row(where, record, text_column, label_column)


def _row(where: str, record: Any, text_column: str, label_column: str, names: list[str] | None = None) -> Row:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a record with fields '{text_column}' and '{label_column}', "
                         f"got {type(record).__name__}; fix the row")
    for column, param in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in record:
            fields = ", ".join(repr(k)[1:-1] for k in list(record)[:8]) or "none"
            raise ValueError(f"{where}: no field '{column}' (fields: {fields}); set downstream.{param} or fix the row")
    text = record[text_column]
    if not isinstance(text, str) or not text.strip():
        got = "an empty text" if isinstance(text, str) or text is None else f"a {type(text).__name__}"
        raise ValueError(f"{where}: '{text_column}' must be a non-empty string, got {got}; fix or remove the row")
    return where, text, _label_name(where, record[label_column], label_column, names)


def _label_name(where: str, value: Any, column: str, names: list[str] | None) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: missing label in '{column}'; label the row or remove it")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: label in '{column}' must be a string or an integer, got "
                         f"{type(value).__name__} {value!r}; fix the row")
    if names is not None and isinstance(value, int):
        if not 0 <= value < len(names):
            raise ValueError(f"{where}: label id {value} is outside the dataset's {len(names)} classes "
                             f"({', '.join(names[:6])}...); unlabelled test split? give labelled rows")
        return names[value]
    return str(value).strip()


def _label_set(labels_param: str, class_names: list[str] | None, train: list[Row]) -> list[str]:
    if labels_param.strip():
        labels = [name.strip() for name in labels_param.split(",")]
        if any(not name for name in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"downstream.labels {labels_param!r}: give distinct, non-empty names separated by commas")
    elif class_names is not None:
        labels = list(class_names)
    else:
        seen = {label for _, _, label in train}
        numeric = all(label.lstrip("-").isdigit() for label in seen)
        labels = sorted(seen, key=int if numeric else str)
    if len(labels) < 2:
        raise ValueError(f"downstream: {len(labels)} label(s) {labels}; a classification task needs at least 2")
    return labels


def _check_labels(rows: list[Row], labels: list[str], labels_param: str) -> None:
    known = set(labels)
    for where, _text, label in rows:
        if label not in known:
            fix = ("add it to downstream.labels or fix the row" if labels_param.strip()
                   else "the label set is the training split's labels: add training rows with it, set "
                        "downstream.labels, or fix the row")
            shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
            raise ValueError(f"{where}: label {label!r} is not in the label set ({shown}); {fix}")


def _drop_overlaps(raw: dict[str, list[Row]]) -> int:
    """Drop from each given split the rows whose text an earlier split (PRIORITY) holds; the count."""
    seen: set[str] = set()
    removed = 0
    for split in PRIORITY:
        if split not in raw:
            continue
        keys = [match_key(text) for _, text, _ in raw[split]]
        kept = [row for row, key in zip(raw[split], keys) if key not in seen]
        removed += len(raw[split]) - len(kept)
        raw[split] = kept
        seen.update(keys)
    return removed


def _carve(rows: list[Row], fractions: dict[str, float], seed: int) -> tuple[list[Row], dict[str, list[Row]]]:
    """Hold out `fractions` of `rows` per label, keeping the original order within each split.

    The unit is a group of near-duplicates (equal `match_key`), counted under its first
    row's label, so copies never straddle splits. Groups are taken in the order of a seeded
    hash of their key (a row's split does not depend on the file order), each into the
    first held-out split with room for all of it, else train.
    """
    groups: dict[str, list[int]] = {}
    for i, (_where, text, _label) in enumerate(rows):
        groups.setdefault(match_key(text), []).append(i)
    by_label: dict[str, list[str]] = {}
    for key, members in groups.items():
        by_label.setdefault(rows[members[0]][2], []).append(key)
    assigned: dict[int, str] = {}
    for keys in by_label.values():
        room = {split: round(sum(len(groups[k]) for k in keys) * f) for split, f in fractions.items()}
        for key in sorted(keys, key=lambda k: _rank(seed, k)):
            split = next((s for s in room if room[s] >= len(groups[key])), None)
            if split is not None:
                room[split] -= len(groups[key])
                assigned.update(dict.fromkeys(groups[key], split))
    carved = {split: [r for i, r in enumerate(rows) if assigned.get(i) == split] for split in fractions}
    return [r for i, r in enumerate(rows) if i not in assigned], carved


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()


def _read_dataset(task: str, text_column: str, label_column: str) -> tuple[dict[str, list[Row]], list[str] | None]:
    """Splits of a Hugging Face dataset (Hub, local cache, local directory) or a save_to_disk dir."""
    datasets = hub.datasets_module()
    try:
        if task.startswith(hub.HF_PREFIX):
            name, _, config = task.removeprefix(hub.HF_PREFIX).partition(":")
            dataset = datasets.load_dataset(name, config or None)
        else:
            dataset = datasets.load_from_disk(task)
    except ConnectionError as e:
        raise ValueError(f"downstream.task {task!r}: not in the local datasets cache and the Hub is unreachable "
                         f"({hub.first_line(e)}); load it once with network access, or save_to_disk() it and "
                         "set downstream.task to that directory") from None
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"downstream.task {task!r}: {hub.first_line(e)}; check the dataset name and config") from None
    if not isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.DatasetDict({"train": dataset})
    feature = dataset[next(iter(dataset))].features.get(label_column)
    names = list(feature.names) if hasattr(feature, "names") else None
    out: dict[str, list[Row]] = {}
    for split, aliases in SPLIT_ALIASES.items():
        found = next((s for s in dataset if s.lower() in aliases), None)
        if found is None:
            continue
        part = dataset[found]
        for column, param in ((text_column, "text_column"), (label_column, "label_column")):
            if column not in part.column_names:
                raise ValueError(f"downstream.task {task!r}, split {found}: no column '{column}' "
                                 f"(has {', '.join(part.column_names)}); set downstream.{param}")
        rows = part.select_columns([text_column, label_column])
        out[split] = [_row(f"{task}, split {found}, row {i}", record, text_column, label_column, names)
                      for i, record in enumerate(rows)]
    if not out:
        raise ValueError(f"downstream.task {task!r}: no train/validation/test split (has {', '.join(dataset)}); "
                         "save the splits under those names")
    return out, names
