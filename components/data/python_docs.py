"""The second built-in corpus, ``builtin:python-docs``: the docstrings of the installed
third-party packages, read offline.

Where ``builtin:stdlib-docs`` is the task's own domain (its unlabelled text: TAPT), this is
the wider domain around it (DAPT, Gururangan et al. 2020): Python library documentation
written by other projects. Docstrings are read with ``ast`` from each ``.py`` file's bytes
(``stdlib_docs.docstrings_of``), never by importing a package.

What is read, in a deterministic order:

- every distribution ``importlib.metadata`` finds on the given paths (site-packages by
  default), sorted by normalized name; the first of two with the same name wins, as for
  ``import``. Left out: lmforge itself (its text would change with every commit of the
  project, and is the code under test, not a library's docs) and the installers ``pip``,
  ``setuptools`` and ``wheel`` (venv seeds them from ``ensurepip``, outside the lock, so their
  versions differ between machines with the same lock; pip and setuptools are mostly
  vendored copies of other packages too);
- each distribution's ``.py`` files as its RECORD lists them (``dist.files``), sorted by path,
  that lie inside the distribution's site-packages directory (scripts in ``bin/`` are not);
  a file an earlier distribution listed too is read once, for the first (``mlflow-skinny``
  lists ``mlflow``'s files);
- less tests (a ``test``/``tests`` directory, ``test_*.py``, ``*_test.py``, ``conftest.py``)
  and vendored copies (``_vendor``, ``vendor``, ``vendored``, ``extern``, ``third_party``,
  ``_distutils`` ...): a vendored copy repeats another distribution's text, or the
  standard library's, which holds the built-in task's held-out texts. Those copies would be
  cut by decontamination anyway; leaving them out keeps the corpus one copy of each library.

One document per module: its docstrings (module, then classes and functions in source
order) joined by blank lines, with source ``<dist>==<version>:<path>``. A module whose
docstrings hold more than ``DOC_CHARS`` characters (altair's generated schema module holds
1.2 M, over ``validate.max_doc_chars``) becomes several documents of consecutive docstrings,
each at most ``DOC_CHARS`` (a single longer docstring is cut at that length), with sources
``...:<path>#2``, ``#3`` ...: documents a sequence packer can take whole, and a gate that
holds for the corpus at its default params. A file that does not
parse (Python 2 code, templates) is skipped and counted. ``max_characters`` stops reading
once the documents read reach it, so a smaller corpus is a prefix of a larger one.

The installed versions decide the bytes: the same lock gives the same corpus. The manifest
(package, version, files, characters) records which, for the data report and the lineage.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

from components.data.stdlib_docs import docstrings_of

EXCLUDED_DISTRIBUTIONS = frozenset({"lmforge", "pip", "setuptools", "wheel"})
TEST_DIRS = frozenset({"test", "tests"})
VENDORED_DIRS = frozenset({"_vendor", "vendor", "_vendored", "vendored", "extern", "_extern", "third_party",
                           "_bundled", "_distutils", "__pycache__"})
# Where distributions are looked for when a reader names no paths: None = sys.path (the running
# environment's site-packages). Tests point it at a fake site-packages directory.
DEFAULT_PATHS: list[str | Path] | None = None
# The most characters in one document; a module with more docstrings is split (see above).
DOC_CHARS = 100_000
# ast.parse raises these on a file that is not Python 3 source (or nests too deep to compile).
_UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)


def normalized_name(name: str) -> str:
    """PEP 503 normalized distribution name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_read(path: str) -> bool:
    """Whether a RECORD path (posix, relative to site-packages) is a module this corpus reads."""
    parts = path.split("/")
    name = parts[-1]
    if not name.endswith(".py") or ".." in parts or parts[0].endswith((".dist-info", ".egg-info", ".data")):
        return False
    if any(p in TEST_DIRS or p in VENDORED_DIRS for p in parts[:-1]):
        return False
    return not (name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py")


def distributions(paths: Iterable[str | Path] | None = None) -> list[metadata.Distribution]:
    """The distributions read, sorted by normalized name (first found of a name kept)."""
    found = metadata.distributions(path=[str(p) for p in paths]) if paths is not None else metadata.distributions()
    chosen: dict[str, metadata.Distribution] = {}
    for dist in found:
        name = dist.metadata["Name"]
        if not name:
            continue
        key = normalized_name(name)
        if key not in EXCLUDED_DISTRIBUTIONS and key not in chosen:
            chosen[key] = dist
    return [chosen[k] for k in sorted(chosen)]


def modules_of(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(RECORD path, file) of each module of `dist` this corpus reads, sorted by path."""
    out = []
    for entry in dist.files or ():
        rel = entry.as_posix()
        if is_read(rel):
            out.append((rel, Path(dist.locate_file(entry))))
    return sorted(out)


@dataclass
class PythonDocs:
    """A reader: `documents()` streams (source, text); the manifest fills as it goes."""

    max_characters: int = 0
    paths: list[str | Path] | None = None
    manifest: list[dict] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)
    missing: int = 0
    shared: int = 0

    def documents(self) -> Iterator[tuple[str, str]]:
        read, seen = 0, set()
        for dist in distributions(self.paths if self.paths is not None else DEFAULT_PATHS):
            name, version = normalized_name(dist.metadata["Name"]), dist.version
            entry = {"package": name, "version": version, "files": 0, "characters": 0}
            for rel, path in modules_of(dist):
                if self.max_characters and read >= self.max_characters:
                    break
                if path in seen:  # claimed by an earlier distribution too (mlflow-skinny lists mlflow's files)
                    self.shared += 1
                    continue
                seen.add(path)
                try:
                    source = path.read_bytes()
                except OSError:  # listed in RECORD but gone (deleted by hand, or a broken install)
                    self.missing += 1
                    continue
                try:
                    docstrings = docstrings_of(source, str(path))
                except _UNPARSABLE:
                    self.unparsable.append(f"{name}=={version}:{rel}")
                    continue
                if not any(docstrings):
                    continue
                entry["files"] += 1
                for k, part in enumerate(parts_of(docstrings), 1):
                    entry["characters"] += len(part)
                    read += len(part)
                    yield f"{name}=={version}:{rel}" + (f"#{k}" if k > 1 else ""), part
            if entry["files"]:
                self.manifest.append(entry)
            if self.max_characters and read >= self.max_characters:
                return

    def stats(self) -> dict[str, int]:
        """Flat numbers for reports/corpus_stats.json."""
        return {"python_docs_packages": len(self.manifest),
                "python_docs_files": sum(e["files"] for e in self.manifest),
                "python_docs_characters": sum(e["characters"] for e in self.manifest),
                "python_docs_unparsable_files": len(self.unparsable)}

    def report(self) -> dict:
        """reports/corpus_manifest.json: what the corpus was read from, and its digest."""
        return {"max_characters": self.max_characters, "packages": self.manifest,
                "sha256": manifest_digest(self.manifest), "unparsable_files": self.unparsable}


def parts_of(docstrings: Iterable[str], limit: int | None = None) -> list[str]:
    """A module's docstrings as documents of at most `limit` (default DOC_CHARS) characters:
    consecutive docstrings joined by blank lines, a new document where the next would pass the
    limit; a docstring longer than the limit on its own is cut into limit-long pieces. One
    module under the limit is one document, exactly its docstrings joined."""
    limit = limit or DOC_CHARS
    parts: list[str] = []
    current = ""
    for doc in filter(None, docstrings):
        pieces = [doc[i:i + limit] for i in range(0, len(doc), limit)]
        for piece in pieces:
            if current and len(current) + 2 + len(piece) <= limit:
                current += "\n\n" + piece
            else:
                if current:
                    parts.append(current)
                current = piece
    if current:
        parts.append(current)
    return parts


def empty_stats() -> dict[str, int]:
    """The python-docs numbers of a corpus that does not read it (the stats keys stay the same)."""
    return PythonDocs().stats()


def manifest_digest(manifest: list[dict]) -> str:
    """sha256 of the manifest (canonical JSON): equal digests, equal packages and versions read."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest()
