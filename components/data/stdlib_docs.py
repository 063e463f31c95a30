"""The built-in data: CPython's own standard-library documentation, read offline.

Docstrings are read with ``ast`` from the ``.py`` sources, never by importing the modules:
importing has side effects (``antigravity`` opens a browser, ``this`` prints). The one
import is ``pydoc_data.topics``, a plain dict of help texts.

The same docstrings give the built-in downstream task, ``stdlib-chapters``: name the
Library Reference chapter a docstring's module is documented in. It is split by top-level
package (all of ``email.*`` in one split) and near-duplicate docstrings are kept once, so
no split holds text another split was trained or tuned on.
"""
from __future__ import annotations

import ast
import bisect
import hashlib
import itertools
import os
import sysconfig
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from components.data.clean import match_text

# Directories that hold tests, demos, tools or third-party code rather than library docs.
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
)

# Library Reference chapters (docs.python.org/3/library/), merged into neighbours until
# each class has enough modules for train, validation and test splits of its own.
# Label index = position here; keys are top-level module or package names.
CHAPTERS: dict[str, tuple[str, ...]] = {
    # text processing, binary data, data types, numeric and math, functional, i18n
    "text-and-data-types": (
        "string", "re", "difflib", "textwrap", "unicodedata", "stringprep", "readline",
        "rlcompleter", "struct", "codecs", "datetime", "zoneinfo", "calendar", "collections",
        "heapq", "bisect", "array", "weakref", "types", "copy", "pprint", "reprlib", "enum",
        "graphlib", "numbers", "math", "cmath", "decimal", "fractions", "random",
        "statistics", "itertools", "functools", "operator", "gettext", "locale",
    ),
    # file and directory access, data persistence, compression and archiving, file formats
    "files-and-persistence": (
        "pathlib", "fileinput", "stat", "filecmp", "tempfile", "glob", "fnmatch", "linecache",
        "shutil", "genericpath", "posixpath", "ntpath", "pickle", "copyreg", "shelve",
        "marshal", "dbm", "sqlite3", "zlib", "gzip", "bz2", "lzma", "zipfile", "tarfile",
        "csv", "configparser", "tomllib", "netrc", "plistlib", "xdrlib",
    ),
    # generic operating system services, Unix-specific services, cryptographic services
    "os-services": (
        "os", "io", "time", "argparse", "getopt", "optparse", "logging", "getpass", "curses",
        "platform", "errno", "ctypes", "posix", "pwd", "grp", "termios", "tty", "pty", "fcntl",
        "resource", "syslog", "pipes", "crypt", "hashlib", "hmac", "secrets",
    ),
    # concurrent execution, networking and interprocess communication
    "concurrency-and-networking": (
        "threading", "multiprocessing", "concurrent", "subprocess", "sched", "queue",
        "contextvars", "asyncio", "socket", "ssl", "select", "selectors", "signal", "mmap",
        "asynchat", "asyncore",
    ),
    # internet data handling, structured markup processing tools
    "internet-data-and-markup": (
        "email", "json", "mailbox", "mimetypes", "base64", "binascii", "quopri", "html",
        "xml", "mailcap", "uu",
    ),
    "internet-protocols": (
        "webbrowser", "wsgiref", "urllib", "http", "ftplib", "poplib", "imaplib", "smtplib",
        "uuid", "socketserver", "xmlrpc", "ipaddress", "cgi", "cgitb", "nntplib", "telnetlib",
        "smtpd", "nturl2path",
    ),
    # graphical user interfaces with Tk, program frameworks, multimedia services
    "gui-and-multimedia": (
        "tkinter", "turtle", "cmd", "shlex", "wave", "colorsys", "aifc", "sunau", "chunk",
        "sndhdr", "imghdr", "audioop", "ossaudiodev",
    ),
    # development tools, debugging and profiling
    "development-and-debugging": (
        "typing", "pydoc", "doctest", "unittest", "bdb", "faulthandler", "pdb", "profile",
        "cProfile", "pstats", "timeit", "trace", "tracemalloc",
    ),
    # runtime services, custom interpreters, importing, language services, packaging
    "python-runtime": (
        "sys", "sysconfig", "builtins", "warnings", "dataclasses", "contextlib", "abc",
        "atexit", "traceback", "gc", "inspect", "site", "code", "codeop", "zipimport",
        "pkgutil", "modulefinder", "runpy", "importlib", "imp", "ast", "symtable", "token",
        "keyword", "tokenize", "tabnanny", "pyclbr", "py_compile", "compileall", "dis",
        "pickletools", "opcode", "ensurepip", "venv", "zipapp", "distutils",
    ),
}
LABELS: tuple[str, ...] = tuple(CHAPTERS)
_LABEL_OF_TOP = {top: i for i, tops in enumerate(CHAPTERS.values()) for top in tops}
SPLITS = ("train", "validation", "test")
MIN_HELD_OUT_PACKAGES = 3


@dataclass(frozen=True)
class ModuleDocs:
    """The docstrings of one module: module docstring first, then defs in source order."""

    name: str
    docstrings: tuple[str, ...]


def package_of(module: str) -> str:
    """The top-level package of a dotted module name: the unit the task is split by."""
    return module.split(".")[0]


def label_of(module: str) -> int | None:
    """Chapter index of a dotted module name, or None when it is not in the task."""
    return _LABEL_OF_TOP.get(package_of(module))


def _is_public(part: str) -> bool:
    return part.isidentifier() and (not part.startswith("_") or part in ("__init__", "__main__"))


def stdlib_sources(root: Path | None = None) -> list[tuple[str, Path]]:
    """(dotted module name, file) for each public stdlib module, sorted by name."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk never descends into tests, caches or private packages
        # (which also covers ensurepip/_bundled and non-identifier dirs like lib-dynload).
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and _is_public(d))
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext != ".py" or not _is_public(stem):
                continue
            parts = [*rel, stem] if stem != "__init__" else list(rel)
            if parts:
                found.append((".".join(parts), Path(dirpath) / name))
    return sorted(found)


def docstrings_of(source: bytes, filename: str) -> tuple[str, ...]:
    """Module, class and function docstrings of one source file, in source order."""
    with warnings.catch_warnings():
        # Old stdlib files hold invalid escape sequences; that is their business, not ours.
        warnings.simplefilter("ignore")
        tree = ast.parse(source, filename=filename)
    defs = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, defs)), key=lambda n: (n.lineno, n.col_offset)
    )
    docs = (ast.get_docstring(n, clean=True) for n in [tree, *nodes])
    return tuple(d for d in docs if d and d.strip())


def extract_stdlib_docs(root: Path | None = None) -> list[ModuleDocs]:
    """Docstrings of every public stdlib module, sorted by module name."""
    return [
        ModuleDocs(name, docstrings_of(path.read_bytes(), str(path)))
        for name, path in stdlib_sources(root)
    ]


def cleaned_modules(clean: Callable[[str], str]) -> list[ModuleDocs]:
    """`extract_stdlib_docs` with each docstring passed through the corpus cleaning."""
    return [ModuleDocs(m.name, tuple(clean(d) for d in m.docstrings)) for m in extract_stdlib_docs()]


def builtin_documents(
    modules: list[ModuleDocs], test_modules: set[str], held_out_texts: set[str], clean: Callable[[str], str],
    counts: dict | None = None,
) -> Iterator[tuple[str, str]]:
    """The built-in corpus: one document per module (test-split modules left out) and one
    per pydoc topic.

    A docstring or topic that holds a downstream validation or test text (`held_out_texts`),
    near-duplicates included (`texts_quoting`), is left out too: docstrings are shared and
    quoted across modules (posixpath and ntpath, multiprocessing.context). How many is
    counted in counts["held_out_excluded"].
    """
    kept = [m for m in modules if m.name not in test_modules]
    topics = [(f"pydoc-topic:{name}", clean(text)) for name, text in pydoc_topics()]
    units = [d for m in kept for d in m.docstrings] + [text for _, text in topics]
    leaked = texts_quoting(units, held_out_texts)
    if counts is not None:
        counts["held_out_excluded"] = counts.get("held_out_excluded", 0) + sum(u in leaked for u in units)
    for m in kept:
        yield m.name, "\n\n".join(d for d in m.docstrings if d not in leaked)
    yield from ((source, text) for source, text in topics if text not in leaked)


def pydoc_topics() -> list[tuple[str, str]]:
    """(topic, text) for the pydoc help topics, sorted by topic."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode("utf-8")).hexdigest()


def _fill_held_out(
    ranked: list[str], sizes: dict[str, int], targets: dict[str, float]
) -> dict[str, str]:
    """Deal one class's hash-ordered packages into held-out splits up to `targets` examples."""
    room, count = dict(targets), dict.fromkeys(targets, 0)
    split_of = {}
    for package in ranked:
        # Until a split has MIN_HELD_OUT_PACKAGES, a package may use only an even share of
        # what is left of its room, so one big package cannot fill it alone.
        fits = [s for s in room if sizes[package] <= room[s] / max(1, MIN_HELD_OUT_PACKAGES - count[s])]
        # The split with most room left (relative to its target) takes it, so small
        # packages spread over both instead of all landing in the first.
        split = max(fits, key=lambda s: room[s] / targets[s]) if fits else "train"
        if split != "train":
            room[split] -= sizes[package]
            count[split] += 1
        split_of[package] = split
    return split_of


def split_modules(
    sizes: dict[str, int], validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Module -> split, given each labelled module's example count.

    The unit is the top-level package: every module of ``email`` (or ``asyncio``, ``xml``)
    lands in the same split, because a package's modules share vocabulary, names and
    quoted docstrings, so splitting by module tested on near-copies of training text. Per
    class, packages are taken in the order of a hash of (seed, package name); test and
    validation each fill up to their fraction of the class's examples, the rest is train.
    Filling by examples rather than by package count keeps one huge package (tkinter) from
    being a whole split on its own.
    """
    package_sizes: Counter[str] = Counter()
    for module, size in sizes.items():
        package_sizes[package_of(module)] += size
    by_label: dict[int, list[str]] = {}
    for package in sorted(package_sizes):
        by_label.setdefault(label_of(package), []).append(package)
    split_of = {}
    for label, members in sorted(by_label.items()):
        total = sum(package_sizes[p] for p in members)
        targets = {"test": test_fraction * total, "validation": validation_fraction * total}
        ranked = sorted(members, key=lambda p: _rank(seed, p))
        split_of.update(_fill_held_out(ranked, package_sizes, targets))
        missing = set(SPLITS) - {split_of[p] for p in members}
        if missing:
            raise ValueError(
                f"downstream class '{LABELS[label]}' has no top-level package for {sorted(missing)}: too few "
                "packages for downstream.validation_fraction/test_fraction (or lower downstream.min_chars)"
            )
    return {module: split_of[package_of(module)] for module in sizes}


def texts_quoting(texts: list[str], needles: Iterable[str]) -> set[str]:
    """The texts that hold any of `needles`, compared as `match_text` (so a near-duplicate,
    differing only in case, spacing, punctuation or numbers, counts), word-aligned."""
    padded = [f" {match_text(t)} " for t in texts]
    joined = "\0".join(padded)
    starts = list(itertools.accumulate((len(t) + 1 for t in padded[:-1]), initial=0))
    found = set()
    for needle in {f" {match_text(n)} " for n in needles}:
        pos = joined.find(needle)
        while pos != -1:
            found.add(texts[bisect.bisect_right(starts, pos) - 1])
            pos = joined.find(needle, pos + 1)
    return found


def chapter_examples(
    modules: list[ModuleDocs], min_chars: int, validation_fraction: float,
    test_fraction: float, seed: int,
) -> dict[str, list[tuple[str, int, str]]]:
    """Split -> [(text, label, module)] from already-cleaned docstrings.

    Near-duplicates (equal `match_text`) form one group, kept once, in the first of test,
    validation, train that holds a member; a text that quotes a text of an earlier split
    (train quoting validation or test, validation quoting test) is dropped, so nothing
    tested or tuned on was trained on.
    """
    usable = {}
    for m in modules:
        docs = [d for d in m.docstrings if len(d) >= min_chars]
        if docs and label_of(m.name) is not None:
            usable[m.name] = docs
    split_of = split_modules({n: len(d) for n, d in usable.items()}, validation_fraction, test_fraction, seed)
    texts = {s: [t for n in sorted(usable) if split_of[n] == s for t in usable[n]] for s in SPLITS}
    quoting = {"test": set(), "validation": texts_quoting(texts["validation"], texts["test"]),
               "train": texts_quoting(texts["train"], texts["test"] + texts["validation"])}
    seen = set()
    examples: dict[str, list[tuple[str, int, str]]] = {s: [] for s in SPLITS}
    for split in ("test", "validation", "train"):
        for name in sorted(usable):
            for text in usable[name] if split_of[name] == split else ():
                key = match_text(text)
                if key in seen or text in quoting[split]:
                    continue
                seen.add(key)
                examples[split].append((text, label_of(name), name))
    return examples


def subsample(
    rows: list[tuple[str, int, str]], cap: int, seed: int
) -> list[tuple[str, int, str]]:
    """At most `cap` rows, stratified: one of each class first, then proportionally.

    Each row's key is its hash rank within its class divided by the class size, so taking
    the smallest keys keeps class proportions; the original row order is kept.
    """
    if cap <= 0 or len(rows) <= cap:
        return rows
    by_label: dict[int, list[int]] = {}
    for i, (_text, label, _module) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    keys = {}
    for label, members in by_label.items():
        ranked = sorted(members, key=lambda i: _rank(seed, rows[i][2] + "\0" + rows[i][0]))
        for r, i in enumerate(ranked):
            keys[i] = (r > 0, r / len(ranked), label)
    chosen = sorted(sorted(keys, key=keys.__getitem__)[:cap])
    return [rows[i] for i in chosen]
