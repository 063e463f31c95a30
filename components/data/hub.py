"""Corpus text from ``datasets``: ``save_to_disk`` directories and ``hf:<name>[:<config>]``.

Datasets are read in batches from memory-mapped Arrow, or streamed from the Hub, so memory
does not grow with them; ``datasets`` is imported only when one is named.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

from components.config import HF_PREFIX  # noqa: F401  (re-exported: readers import it from here)

HF_SPLIT = "train"
BATCH_ROWS = 1024

Raw = Iterator[tuple[str, Any]]


class SourceError(ValueError):
    """Bad input, already described in one line (file or dataset, row, fix)."""


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def datasets_module():
    import datasets

    # The stage's stderr is a log, not a terminal: no progress bars.
    datasets.disable_progress_bars()
    return datasets


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_saved_dataset(path: Path, column: str) -> Raw:
    datasets = datasets_module()
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable save_to_disk directory ({first_line(e)}); save it again") from None
    if isinstance(dataset, datasets.DatasetDict):
        if HF_SPLIT not in dataset:
            raise ValueError(f"{path}: no '{HF_SPLIT}' split (has {', '.join(dataset)}); "
                             f"save the split you want as its own directory")
        dataset = dataset[HF_SPLIT]
    yield from _dataset_rows(dataset, column, str(path))


def read_hub(source: str, column: str) -> Raw:
    name, _, config = source.removeprefix(HF_PREFIX).partition(":")
    datasets = datasets_module()
    args = (name, config or None)
    offline = bool(datasets.config.HF_HUB_OFFLINE or getattr(datasets.config, "HF_DATASETS_OFFLINE", False))
    try:
        if offline and not Path(name).is_dir():
            # Streaming always reads remote files; offline, only the local cache (Arrow,
            # memory-mapped, so still no growth in RAM) can serve the dataset.
            rows = _open_hub(datasets, args, column, source, streaming=False)
        else:
            try:
                rows = _open_hub(datasets, args, column, source, streaming=True)
            except ConnectionError:  # no network after all: the cache may hold it
                rows = _open_hub(datasets, args, column, source, streaming=False)
    except SourceError:
        raise
    except ConnectionError as e:
        raise ValueError(
            f"data.source {source!r}: not in the local datasets cache and the Hub is unreachable "
            f"({first_line(e)}); load it once with network access, or save_to_disk() it and set "
            "data.source to that directory"
        ) from None
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"data.source {source!r}: {first_line(e)}; check the dataset name and config") from None
    try:
        yield from rows
    except ConnectionError as e:  # a stream cut mid-way
        raise ValueError(f"data.source {source!r}: reading failed ({first_line(e)}); run the stage again") from None


def _open_hub(datasets: Any, args: tuple, column: str, source: str, streaming: bool) -> Raw:
    """The dataset's rows, its first one already read: a stream can fail only once iterated."""
    rows = _dataset_rows(datasets.load_dataset(*args, split=HF_SPLIT, streaming=streaming), column, source)
    first = next(rows, None)
    return rows if first is None else itertools.chain([first], rows)


_MISSING = object()


def _dataset_rows(dataset: Any, column: str, source: str) -> Raw:
    """Rows of a `datasets` Dataset (memory-mapped Arrow) or IterableDataset (streamed)."""
    names = dataset.column_names
    if names is not None and column not in names:
        raise SourceError(f"{source}: no column '{column}' (has {', '.join(names)}); set data.text_column")
    feature = (dataset.features or {}).get(column)
    if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise SourceError(f"{source}: column '{column}' must hold strings, got {feature}; set data.text_column")
    if not isinstance(dataset, datasets_module().IterableDataset):
        rows = (text for batch in dataset.select_columns([column]).iter(batch_size=BATCH_ROWS)
                for text in batch[column])
    else:
        rows = (record.get(column, _MISSING) for record in dataset)
    for i, text in enumerate(rows):
        if text is _MISSING:
            raise SourceError(f"{source}, row {i}: no field '{column}'; set data.text_column")
        if text is not None and not isinstance(text, str):
            raise SourceError(f"{source}, row {i}: '{column}' must be a string, got {type(text).__name__}")
        yield f"{source}:{i}", text
