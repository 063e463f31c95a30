"""builtin:python-docs: the installed packages' docstrings, read from a fake site-packages."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.config import BUILTIN_CORPORA, DataConfig, DownstreamConfig, builtin_corpora
from components.data import python_docs, stdlib_docs
from components.data.clean import clean_text
from components.data.corpus import _task, build_corpus, held_out_texts
from components.data.decontaminate import Report
from components.data.python_docs import PythonDocs

SEED = 1337


def _dist(site: Path, name: str, version: str, files: dict[str, str], record_extra: tuple[str, ...] = ()) -> None:
    """A distribution as pip installs it: the files, and a .dist-info with METADATA and RECORD."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    record = [f"{rel},," for rel in files] + list(record_extra) + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


def _module(doc: str, *functions: tuple[str, str]) -> str:
    body = "".join(f'\n\ndef {name}():\n    """{fdoc}"""\n' for name, fdoc in functions)
    return f'"""{doc}"""\n{body}'


@pytest.fixture
def held_out_text() -> str:
    """A test-split text of the built-in task, long enough to match by 13-grams."""
    modules = stdlib_docs.cleaned_modules(clean_text)
    _, full = _task(modules, DownstreamConfig(), SEED)
    return next(t for t, _, _ in full["test"] if 20 <= len(t.split()) <= 60 and '"' not in t and "\\" not in t)


def make_site(root: Path, planted: str = "A planted docstring with enough words to be kept as it is.") -> Path:
    site = root / "site-packages"
    _dist(site, "Zeta_Tools", "0.3", {
        "zeta_tools/__init__.py": _module("Zeta tools: the last package by name, read last of all."),
    })
    _dist(site, "fakepkg", "1.0", {
        "fakepkg/__init__.py": _module("Fakepkg: a tiny fake distribution for the python-docs reader.",
                                       ("main", "Run the fake package's main entry point and return zero.")),
        "fakepkg/core.py": _module("Core helpers of fakepkg, documented at some length for the corpus.",
                                   ("add", "Add two numbers together and return their sum to the caller."),
                                   ("planted", planted)),
        "fakepkg/broken.py": 'print "a Python 2 statement"\n',
        "fakepkg/nodocs.py": "X = 1\n",
        "fakepkg/tests/test_core.py": _module("TESTS ARE NOT READ: this docstring must never reach the corpus."),
        "fakepkg/_vendor/six.py": _module("VENDORED COPY: another package's text, never read here."),
        "fakepkg/data.txt": "not python",
    }, record_extra=("../../../bin/fakepkg,,", "fakepkg/missing.py,,"))
    _dist(site, "Aardvark", "2.1", {
        "aardvark.py": _module("Aardvark: a single-module distribution, first by normalized name."),
    })
    _dist(site, "fakepkg-skinny", "1.0", {}, record_extra=("fakepkg/core.py,,",))  # fakepkg's file again
    _dist(site, "pip", "26.0", {"pip/__init__.py": _module("PIP IS AN INSTALLER: left out of the corpus.")})
    return site


@pytest.fixture
def site(tmp_path) -> Path:
    return make_site(tmp_path)


def _read(site: Path, max_characters: int = 0) -> tuple[list[tuple[str, str]], PythonDocs]:
    reader = PythonDocs(max_characters, [site])
    return list(reader.documents()), reader


def test_reads_docstrings_in_package_then_path_order(site):
    docs, reader = _read(site)
    assert [s for s, _ in docs] == ["aardvark==2.1:aardvark.py", "fakepkg==1.0:fakepkg/__init__.py",
                                    "fakepkg==1.0:fakepkg/core.py", "zeta-tools==0.3:zeta_tools/__init__.py"]
    core = dict(docs)["fakepkg==1.0:fakepkg/core.py"]
    assert core.split("\n\n") == ["Core helpers of fakepkg, documented at some length for the corpus.",
                                  "Add two numbers together and return their sum to the caller.",
                                  "A planted docstring with enough words to be kept as it is."]
    text = "\n".join(t for _, t in docs)
    for absent in ("TESTS ARE NOT READ", "VENDORED COPY", "PIP IS AN INSTALLER", "Python 2"):
        assert absent not in text
    assert reader.unparsable == ["fakepkg==1.0:fakepkg/broken.py"]
    assert reader.missing == 1  # listed in RECORD, not on disk
    assert reader.shared == 1  # fakepkg-skinny's copy of fakepkg/core.py is not read twice


def test_two_reads_give_the_same_documents_and_bytes(site):
    assert _read(site)[0] == _read(site)[0]


def test_installed_packages_read_twice_are_the_same():
    """The running environment, cut short (about 0.1 s): the same order and bytes each time."""
    first, a = _read_installed(50_000)
    again, b = _read_installed(50_000)
    assert first == again and a.manifest == b.manifest and first
    assert not any(s.split("==")[0] in python_docs.EXCLUDED_DISTRIBUTIONS for s, _ in first)


def _read_installed(cap: int):
    reader = PythonDocs(cap)
    return list(reader.documents()), reader


def test_max_characters_is_a_prefix(site):
    everything, _ = _read(site)
    sizes = [len(t) for _, t in everything]
    for cap in (1, sizes[0], sizes[0] + 1, sum(sizes[:3]), 10**9):
        docs, reader = _read(site, cap)
        assert docs == everything[:len(docs)]
        assert sum(len(t) for _, t in docs) >= min(cap, sum(sizes))
        assert sum(len(t) for _, t in docs[:-1]) < cap  # stops at the first document that reaches the cap
    assert [s for s, _ in _read(site, sizes[0] + 1)[0]] == [s for s, _ in everything[:2]]


def test_parts_of_keeps_docstrings_whole_under_the_limit_and_splits_past_it():
    docs = ["a" * 40, "b" * 40, "c" * 15, "d" * 130, "e" * 5]
    parts = python_docs.parts_of(docs, limit=100)
    assert parts == ["a" * 40 + "\n\n" + "b" * 40 + "\n\n" + "c" * 15, "d" * 100, "d" * 30 + "\n\n" + "e" * 5]
    assert all(len(p) <= 100 for p in parts)
    assert "".join(parts).replace("\n", "") == "".join(docs)  # nothing lost, order kept
    assert python_docs.parts_of(docs[:2], limit=100) == ["\n\n".join(docs[:2])]  # under it: one document
    assert python_docs.parts_of(["", "x"]) == ["x"]


def test_a_module_past_the_limit_becomes_numbered_documents(tmp_path, monkeypatch):
    """altair's generated schema module holds 1.2 M characters of docstrings, over the gate's
    validate.max_doc_chars: it is read as consecutive documents, each within DOC_CHARS."""
    functions = [(f"f{i}", f"Function number {i} of a generated module, documented at length. " * 3) for i in range(40)]
    site = tmp_path / "site-packages"
    _dist(site, "bigpkg", "1.0", {"bigpkg/schema.py": _module("A generated schema module.", *functions),
                                  "bigpkg/small.py": _module("A small module of the same package.")})
    monkeypatch.setattr(python_docs, "DOC_CHARS", 2_000)
    docs, reader = _read(site)
    sources = [s for s, _ in docs]
    assert sources[0] == "bigpkg==1.0:bigpkg/schema.py" and sources[-1] == "bigpkg==1.0:bigpkg/small.py"
    assert sources[1:-1] == [f"bigpkg==1.0:bigpkg/schema.py#{k}" for k in range(2, len(sources) - 1 + 1)]
    assert len(sources) > 4 and all(len(t) <= 2_000 for _, t in docs)
    whole = "\n\n".join(stdlib_docs.docstrings_of((site / "bigpkg/schema.py").read_bytes(), "schema.py"))
    assert "\n\n".join(t for _, t in docs[:-1]) == whole
    assert reader.manifest == [{"package": "bigpkg", "version": "1.0", "files": 2,
                                "characters": sum(len(t) for _, t in docs)}]


def test_manifest_sums_match_the_documents(site):
    docs, reader = _read(site)
    assert reader.manifest == [
        {"package": "aardvark", "version": "2.1", "files": 1, "characters": len(docs[0][1])},
        {"package": "fakepkg", "version": "1.0", "files": 2, "characters": len(docs[1][1]) + len(docs[2][1])},
        {"package": "zeta-tools", "version": "0.3", "files": 1, "characters": len(docs[3][1])},
    ]
    stats = reader.stats()
    assert stats == {"python_docs_packages": 3, "python_docs_files": 4,
                     "python_docs_characters": sum(len(t) for _, t in docs), "python_docs_unparsable_files": 1}
    report = reader.report()
    assert report["sha256"] == python_docs.manifest_digest(reader.manifest)
    capped = PythonDocs(1, [site])
    list(capped.documents())
    assert capped.manifest == reader.manifest[:1] and capped.report()["sha256"] != report["sha256"]


def test_record_paths_read():
    assert python_docs.is_read("pkg/mod.py") and python_docs.is_read("pkg/testing/utils.py")
    for path in ("pkg/tests/test_a.py", "pkg/test/a.py", "pkg/test_a.py", "pkg/a_test.py", "conftest.py",
                 "pkg/_vendor/six.py", "pip/_vendor/x/y.py", "setuptools/_distutils/core.py", "../../../bin/x",
                 "pkg-1.0.dist-info/RECORD", "pkg/mod.pyi", "pkg/data.json"):
        assert not python_docs.is_read(path), path


def test_builtin_sources_and_errors():
    assert builtin_corpora("builtin:stdlib-docs+python-docs") == ("stdlib-docs", "python-docs")
    assert builtin_corpora("builtin:python-docs") == ("python-docs",)
    assert builtin_corpora("corpus.jsonl") == ()
    for source in BUILTIN_CORPORA:
        DataConfig(source=source)
    for source in ("builtin:nope", "builtin:python-docs+stdlib-docs", "builtin:stdlib-docs+"):
        with pytest.raises(ValueError) as e:
            DataConfig(source=source)
        message = str(e.value)
        assert "\n" not in message and all(name in message for name in BUILTIN_CORPORA), message
    with pytest.raises(ValueError, match="max_characters must be >= 0"):
        DataConfig(source="builtin:python-docs", max_characters=-1)
    with pytest.raises(ValueError, match="caps builtin:python-docs only"):
        DataConfig(max_characters=1000)
    DataConfig(source="builtin:stdlib-docs+python-docs", max_characters=1000)


def _corpus(root: Path) -> dict[str, str]:
    rows = {}
    for split in ("train", "validation"):
        table = pq.read_table(root / "corpus" / f"{split}.parquet").to_pydict()
        rows.update(zip(table["source"], table["text"]))
    return rows


def test_python_docs_corpus_is_decontaminated(tmp_path, monkeypatch, held_out_text):
    """A built-in task's test text planted in a package (as a vendored stdlib copy would carry
    it) is cut; the cap stops before the last package."""
    site = make_site(tmp_path, planted=held_out_text)
    monkeypatch.setattr(python_docs, "DEFAULT_PATHS", [site])
    everything, _ = _read(site)
    cap = sum(len(t) for _, t in everything[:3])
    report, manifest = Report(), {}
    stats = build_corpus(DataConfig(source="builtin:python-docs", max_characters=cap, min_chars=10),
                         DownstreamConfig(), SEED, tmp_path / "corpus", tmp_path / "downstream", report, manifest)
    rows = _corpus(tmp_path)
    assert set(rows) == {s for s, _ in everything[:3]}  # zeta-tools lies past the cap
    assert report.documents_cut == 1 and report.characters_removed >= len(held_out_text)
    assert stats["decontaminated_documents_cut"] == 1
    assert held_out_text not in "\n".join(rows.values())
    assert "Add two numbers together" in rows["fakepkg==1.0:fakepkg/core.py"]  # only the paragraph went
    assert stats["python_docs_packages"] == 2 and stats["python_docs_characters"] == cap
    assert [e["package"] for e in manifest["packages"]] == ["aardvark", "fakepkg"]
    assert stats["downstream_test"] > 0  # the built-in task still comes with the corpus


def test_stdlib_and_python_docs_together(tmp_path, monkeypatch):
    monkeypatch.setattr(python_docs, "DEFAULT_PATHS", [make_site(tmp_path)])
    manifest = {}
    stats = build_corpus(DataConfig(source="builtin:stdlib-docs+python-docs"), DownstreamConfig(), SEED,
                         tmp_path / "corpus", tmp_path / "downstream", Report(), manifest)
    sources = set(_corpus(tmp_path))
    assert {"aardvark==2.1:aardvark.py", "fakepkg==1.0:fakepkg/core.py"} <= sources
    stdlib_modules = {s for s in sources if "==" not in s and not s.startswith("pydoc-topic:")}
    assert len(stdlib_modules) > 100 and any(s.startswith("pydoc-topic:") for s in sources)
    assert stats["python_docs_packages"] == 3 and len(manifest["packages"]) == 3
    assert stats["excluded_test_documents"] > 0  # the stdlib part still leaves out the test-split modules


def test_lineage_reads_the_manifest_digest(tmp_path, site):
    from components.registry.lineage import corpus_manifest_digest

    path = tmp_path / "corpus_manifest.json"
    assert corpus_manifest_digest(path) == "unknown"  # ingest has not run
    path.write_text(json.dumps({"source": "builtin:stdlib-docs", **PythonDocs().report()}))
    assert corpus_manifest_digest(path) == "none"  # a corpus that read no package
    reader = PythonDocs(0, [site])
    list(reader.documents())
    path.write_text(json.dumps({"source": "builtin:python-docs", **reader.report()}))
    assert corpus_manifest_digest(path) == python_docs.manifest_digest(reader.manifest)[:16]
