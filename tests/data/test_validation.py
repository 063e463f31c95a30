"""Corpus validation: a clean corpus passes; each corruption fails exactly its own check."""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.config import ValidateConfig
from components.params import ConfigError, build_config
from components.data.validation import (
    document_stats,
    failure_report,
    validate_corpus,
    write_validation_report,
)

SENTENCES = [
    "The river had risen overnight, and by morning the lower fields were under a sheet of brown water.",
    "She kept her grandfather's watch in a drawer, wound it every Sunday, and never once wore it.",
    "Most of the town's bakeries open before dawn, so the streets smell of bread long before they are busy.",
    "A good map leaves out far more than it shows, which is exactly what makes it useful.",
    "The committee met three times in March but could not agree on where the new library should stand.",
    "When the power failed, the children lit candles and told stories until the lights flickered back.",
    "He learned to sail on a small lake, where the wind changed direction every few minutes.",
    "Old railway bridges were often built far stronger than needed, because nobody trusted the numbers yet.",
    "The garden was mostly weeds, but the apple tree in the corner still gave fruit every autumn.",
    "Researchers counted the birds twice a year and noticed that the swallows were arriving earlier.",
    "Her first novel sold poorly, yet readers who found it tended to press it on all their friends.",
    "The ferry crossing takes forty minutes in calm weather and well over an hour when the sea is rough.",
    "A cup of tea, a quiet room and an unanswered letter can fill an entire afternoon.",
    "Engineers tested the new pump for a week before anyone was allowed to rely on it.",
    "The museum keeps most of its collection in storage, rotating a few pieces onto display each season.",
    "Snow arrived late that year, and the ski lifts stood idle until the middle of January.",
    "Every village along the coast claims to have invented the fish stew that all of them serve.",
    "The teacher asked each student to bring one question they could not answer by themselves.",
    "Walking the whole length of the old wall takes most of a day and rewards you with wide views.",
    "Markets in the square sell cheese, honey, and whatever vegetables happen to be in season.",
    "The astronomer spent years measuring the same star and published only when she was certain.",
    "A narrow staircase led up to the attic, where the family had stored letters for a century.",
    "Farmers planted hedges between the fields to slow the wind and give shelter to small animals.",
    "The orchestra rehearsed the symphony slowly at first, then at full speed on the last evening.",
    "Nobody remembered who had planted the oak, but everyone agreed it was older than the church.",
    "Trains to the capital leave every hour, although the early ones are almost always crowded.",
    "The recipe called for fresh herbs, so he walked to the market before the stalls had fully opened.",
    "Clear instructions save more time than clever tools, a lesson the workshop learned the hard way.",
    "The lighthouse keeper wrote down the weather every morning for thirty-one years without a break.",
    "Rain drummed on the tin roof all night, and in the morning the path had turned to mud.",
]
CHINESE = (
    "清晨的湖面上笼罩着一层薄雾，远处的山峦若隐若现。渔民们早已划着小船出发，"
    "岸边的柳树在微风中轻轻摇曳。村里的孩子们背着书包走过石桥，笑声传得很远。"
    "到了中午，阳光洒满田野，农民们坐在树荫下休息，谈论着今年的收成。"
)


def doc_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def prose(i: int) -> str:
    """A distinct document of about 3,000 characters of English sentences."""
    order = SENTENCES[:]
    random.Random(i).shuffle(order)
    return f"Field notes, entry {i}.\n\n" + " ".join(order)


def good_texts() -> tuple[list[str], list[str]]:
    train = [prose(i) for i in range(50)]
    validation = [prose(i) for i in range(50, 59)] + [CHINESE]
    return train, validation


def write_corpus(directory: Path, train: list[str], validation: list[str]) -> Path:
    directory.mkdir(parents=True)
    for split, texts in (("train", train), ("validation", validation)):
        pd.DataFrame({
            "doc_id": pd.Series([doc_id(t) for t in texts], dtype=str),
            "source": pd.Series(["test"] * len(texts), dtype=str),
            "text": pd.Series(texts, dtype=str),
        }).to_parquet(directory / f"{split}.parquet", index=False)
    return directory


def replace_train_doc(text: str):
    def corrupt(train, validation):
        return [text, *train[1:]], validation, text
    return corrupt


def with_replacement_chars(train, validation):
    bad = "".join("\ufffd" if k % 20 == 0 else c for k, c in enumerate(prose(100)))
    return [bad, *train[1:]], validation, bad


def with_duplicate(train, validation):
    return train, [train[3], *validation[1:]], train[3]


def too_few_documents(train, validation):
    return train[:35], validation[:5], None


def too_few_characters(train, validation):
    return [t[:1000] for t in train], [t[:1000] for t in validation], None


def empty_validation(train, validation):
    return train + validation, [], None


# case -> (corruption, the one check that must fail, its expectation type, its column)
CASES = {
    "empty_text": (replace_train_doc(""), "text_not_empty",
                   "expect_column_values_to_be_in_set", "text_is_null_or_empty"),
    "too_short": (replace_train_doc("Far too short."), "doc_length",
                  "expect_column_values_to_be_between", "n_chars"),
    "too_long": (replace_train_doc(" ".join(SENTENCES) * 400), "doc_length",
                 "expect_column_values_to_be_between", "n_chars"),
    "binary_garbage": (replace_train_doc(prose(101)[:200] + "".join(map(chr, range(1, 9))) * 100),
                       "printable_share", "expect_column_values_to_be_between", "printable_share"),
    "replacement_chars": (with_replacement_chars, "replacement_share",
                          "expect_column_values_to_be_between", "replacement_share"),
    "duplicates": (with_duplicate, "duplicate_share",
                   "expect_column_mean_to_be_between", "is_duplicate"),
    "too_few_documents": (too_few_documents, "document_count",
                          "expect_table_row_count_to_be_between", None),
    "too_few_characters": (too_few_characters, "character_count",
                           "expect_column_sum_to_be_between", "n_chars"),
    "empty_validation": (empty_validation, "validation_document_count",
                         "expect_table_row_count_to_be_between", None),
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, tuple[Path, str | None]]:
    """Corpus directory and corrupted text for the good corpus and every case."""
    root = tmp_path_factory.mktemp("corpora")
    out = {"good": (write_corpus(root / "good", *good_texts()), None)}
    for case, (corrupt, *_rest) in CASES.items():
        train, validation, bad = corrupt(*good_texts())
        out[case] = (write_corpus(root / case, train, validation), bad)
    return out


@pytest.fixture(scope="module")
def results(corpora) -> dict[str, dict]:
    """One validation run per corpus, shared by the tests (GX costs ~0.2 s a run)."""
    return {case: validate_corpus(path, ValidateConfig()) for case, (path, _bad) in corpora.items()}


def by_name(result: dict) -> dict[str, dict]:
    return {e["name"]: e for e in result["expectations"]}


def test_good_corpus_passes(results):
    result = results["good"]
    assert result["success"] is True, result["summary"]
    assert len(result["expectations"]) == 8
    assert all(e["success"] for e in result["expectations"])
    assert result["statistics"]["evaluated_expectations"] == 8
    assert result["statistics"]["successful_expectations"] == 8
    assert result["corpus"]["train_documents"] == 50
    assert result["corpus"]["validation_documents"] == 10
    assert result["summary"] == "all 8 expectations passed"
    checks = by_name(result)
    assert checks["document_count"]["observed_value"] == 60
    assert checks["validation_document_count"]["observed_value"] == 10
    assert checks["duplicate_share"]["observed_value"] == 0.0
    expected_chars = sum(len(t) for split in good_texts() for t in split)
    assert checks["character_count"]["observed_value"] == expected_chars
    assert json.loads(json.dumps(result, allow_nan=False)) == result


@pytest.mark.parametrize("case", CASES)
def test_each_corruption_fails_only_its_check(case, results, corpora):
    _corrupt, name, expectation, column = CASES[case]
    result = results[case]
    assert result["success"] is False
    failed = [e for e in result["expectations"] if not e["success"]]
    assert [e["name"] for e in failed] == [name], result["summary"]
    (entry,) = failed
    assert entry["expectation"] == expectation
    assert entry["column"] == column
    assert entry["error"] is None
    assert result["summary"].startswith("1 of 8 expectations failed: ")
    assert entry["description"] in result["summary"]
    assert result["statistics"]["unsuccessful_expectations"] == 1
    bad = corpora[case][1]
    if bad is not None:  # one bad document: it is counted and named
        assert entry["unexpected_count"] == 1
        assert entry["unexpected_examples"] == [doc_id(bad)]
        assert doc_id(bad)[:12] in result["summary"]
    json.dumps(result, allow_nan=False)


def test_aggregate_failures_report_observed_values(results):
    assert by_name(results["too_few_documents"])["document_count"]["observed_value"] == 40
    assert "documents >= 50 (observed 40)" in results["too_few_documents"]["summary"]
    validation_count = by_name(results["empty_validation"])["validation_document_count"]
    assert validation_count["observed_value"] == 0
    assert by_name(results["too_few_characters"])["character_count"]["observed_value"] == 59 * 1000 + len(CHINESE)
    assert by_name(results["duplicates"])["duplicate_share"]["observed_value"] == pytest.approx(1 / 60)


def test_mostly_tolerates_a_few_bad_documents(corpora):
    path, _bad = corpora["too_short"]
    assert validate_corpus(path, ValidateConfig(mostly=0.98))["success"] is True
    assert validate_corpus(path, ValidateConfig(min_doc_chars=10))["success"] is True


def test_document_stats():
    garbage = "abc" + "\x00\x01\x02\x03\x04\x05\x06"
    frame = pd.DataFrame({
        "split": ["train"] * 5 + ["validation"] * 2,
        "doc_id": [f"d{i}" for i in range(7)],
        "text": [CHINESE, garbage, "ok\ufffd\n\tline", None, " \n ", "", CHINESE],
    })
    stats = document_stats(frame)
    assert list(stats.columns) == ["split", "doc_id", "n_chars", "printable_share",
                                   "replacement_share", "is_duplicate", "text_is_null_or_empty"]
    assert stats["n_chars"].iloc[0] == len(CHINESE)
    assert stats["printable_share"].iloc[0] == 1.0  # CJK text is printable
    assert stats["printable_share"].iloc[1] == pytest.approx(3 / 10)
    assert stats["printable_share"].iloc[2] == 1.0  # \n and \t count as whitespace
    assert stats["replacement_share"].iloc[2] == pytest.approx(1 / 9)
    assert stats["text_is_null_or_empty"].tolist() == [False, False, False, True, True, True, False]
    assert stats["n_chars"].iloc[3:6].isna().all()
    assert stats["is_duplicate"].tolist() == [False] * 6 + [True]  # the validation copy

    seen: set[bytes] = set()
    document_stats(frame.iloc[:1], seen)
    later = document_stats(frame.iloc[6:], seen)  # a later batch sees earlier hashes
    assert later["is_duplicate"].tolist() == [True]


def test_missing_corpus_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as missing_dir:
        validate_corpus(tmp_path / "nowhere", ValidateConfig())
    message = str(missing_dir.value)
    assert str(tmp_path / "nowhere") in message and "run the ingest stage first" in message
    assert "\n" not in message

    corpus = write_corpus(tmp_path / "corpus", [prose(1)], [prose(2)])
    (corpus / "validation.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="validation.parquet.*run the ingest stage first"):
        validate_corpus(corpus, ValidateConfig())


def test_missing_column_is_named(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    frame = pd.DataFrame({"doc_id": [doc_id("x" * 30)], "text": ["x" * 30]})
    for split in ("train", "validation"):
        frame.to_parquet(corpus / f"{split}.parquet")
    with pytest.raises(ValueError, match="train.parquet: missing column.s. source"):
        validate_corpus(corpus, ValidateConfig())


def test_write_validation_report(results, tmp_path):
    out = tmp_path / "reports" / "validation"
    write_validation_report(results["good"], out)
    write_validation_report(results["binary_garbage"], out)  # replaces the first report
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "result.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["validation"]  # no temp dirs left
    assert json.loads((out / "result.json").read_text(encoding="utf-8")) == results["binary_garbage"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("<tr class=") == 8
    assert page.count('<tr class="fail">') == 1
    assert "printable_share &gt;= 0.95" in page
    assert "Corpus validation failed" in page
    assert "http" not in page and "<script" not in page and "<link" not in page


@pytest.mark.parametrize("field, value", [
    ("min_printable_share", 1.5),
    ("max_replacement_share", -0.1),
    ("max_duplicate_share", 2.0),
    ("mostly", 1.01),
    ("min_documents", -1),
    ("min_characters", 1.5),
    ("min_validation_documents", True),
    ("min_doc_chars", -5),
    ("max_doc_chars", 0),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"validate\.{field} must"):
        ValidateConfig(**{field: value})


def test_config_bounds_are_checked_together():
    with pytest.raises(ValueError, match=r"validate\.max_doc_chars .*min_doc_chars \(100\), got 50"):
        ValidateConfig(min_doc_chars=100, max_doc_chars=50)
    with pytest.raises(ConfigError, match=r"validate\.min_printable_share must be in \[0, 1\], got 1.5"):
        build_config(ValidateConfig, {"min_printable_share": 1.5}, "validate")
    assert build_config(ValidateConfig, {"mostly": 1}, "validate").mostly == 1.0


def test_failure_report_names_expectation_observed_value_and_documents(results, corpora):
    report = failure_report(results["binary_garbage"], "reports/validation/index.html").splitlines()
    bad = corpora["binary_garbage"][1]
    assert report[0] == "corpus failed the gate: 1 of 8 expectations failed (report: reports/validation/index.html)"
    assert report[1] == "  FAILED printable_share: expected printable_share >= 0.95; failed by 1 of 60 documents"
    assert report[2] == f"    doc {doc_id(bad)[:12]} printable_share=0.2 in train:test: {bad[:80]!r}"
    (entry,) = [e for e in results["binary_garbage"]["expectations"] if not e["success"]]
    assert entry["documents"] == [{"doc_id": doc_id(bad), "value": pytest.approx(0.2), "where": ["train:test"], "text": bad[:80]}]

    duplicates = failure_report(results["duplicates"], "r").splitlines()
    assert duplicates[1] == "  FAILED duplicate_share: expected duplicate share <= 0; observed 0.01667 (1 duplicate document(s))"
    assert duplicates[2].endswith(" in train:test, validation:test: " + repr(corpora["duplicates"][1][:80]))
    few = failure_report(results["too_few_documents"], "r").splitlines()
    assert few[1:] == ["  FAILED document_count: expected documents >= 50; observed 40"]


def _page_text(path: Path) -> str:
    """What a browser shows of a static page: tags, scripts and styles out, whitespace squeezed."""
    import html
    import re

    body = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


@pytest.mark.parametrize("case", ["good", "binary_garbage"])
def test_gx_data_docs_show_every_expectation_and_its_observed_value(corpora, tmp_path, case):
    """GX builds its own Data Docs from the same suite and results; our table links to them."""
    docs, out = tmp_path / "docs", tmp_path / "reports" / "validation"
    docs.mkdir()
    result = validate_corpus(corpora[case][0], ValidateConfig(), data_docs_dir=docs)
    write_validation_report(result, out, data_docs_dir=docs)
    assert sorted(p.name for p in out.iterdir()) == ["gx", "index.html", "result.json"]
    (validation_page,) = (out / "gx" / "validations").rglob("*.html")
    assert (out / "gx" / "index.html").is_file() and (out / "gx" / "expectations" / "corpus.html").is_file()

    page = _page_text(validation_page)
    assert f"Status: {'Succeeded' if result['success'] else 'Failed'}" in page
    assert "Evaluated Expectations 8" in page and f"Successful Expectations {result['statistics']['successful_expectations']}" in page
    per_document = [e for e in result["expectations"] if e["observed_value"] is None]
    assert page.count("% unexpected") == len(per_document) == 4  # a column-map check's observed value
    for e in result["expectations"]:
        assert e["column"] is None or e["column"] in page
        if isinstance(e["observed_value"], int):  # row counts and the character sum, as GX prints them
            assert f" {e['observed_value']} " in page, e["name"]
    suite = _page_text(out / "gx" / "expectations" / "corpus.html")
    assert all(e["column"] in suite for e in result["expectations"] if e["column"])

    ours = (out / "index.html").read_text(encoding="utf-8")
    link = f'href="gx/{validation_page.relative_to(out / "gx").as_posix()}"'
    assert link in ours and 'href="gx/expectations/corpus.html"' in ours and 'href="gx/index.html"' in ours
    assert sum(p.stat().st_size for p in out.rglob("*")) < 1_000_000  # GX's unused GIFs and fonts pruned
    # Offline-complete: the scripts and styles the pages need are local copies, linked relatively.
    index = (out / "gx" / "index.html").read_text(encoding="utf-8")
    assert 'src="static/vendor/jquery.min.js"' in index and 'src="static/vendor/bootstrap-table.min.js"' in index
    assert "../../../../static/vendor/bootstrap.min.css" in validation_page.read_text(encoding="utf-8")
    assert not [p for p in (out / "gx").rglob("*.html") if re.search(r"(unpkg\.com|code\.jquery\.com|bootstrapcdn)", p.read_text())]


def test_validate_stage_exits_1_and_prints_the_summary(tmp_path):
    """The stage as DVC runs it, on a corpus with a binary document and a duplicate."""
    train, validation = good_texts()
    garbage = prose(7)[:200] + "\x01\x02\x03\x04" * 200
    train = [garbage, *train[1:]]
    validation = [train[5], *validation[1:]]
    write_corpus(tmp_path / "data" / "corpus", train, validation)
    (tmp_path / "params.yaml").write_text("profile: tiny\n", encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "LMFORGE_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-m", "pipelines.validate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "validate: 2 of 8 expectations failed: printable_share >= 0.95 (1 document below" in proc.stdout
    err = proc.stderr[proc.stderr.index("error: validate: "):].splitlines()
    assert err[:5] == [
        "error: validate: corpus failed the gate: 2 of 8 expectations failed (report: reports/validation/index.html)",
        "  FAILED printable_share: expected printable_share >= 0.95; failed by 1 of 60 documents",
        f"    doc {doc_id(garbage)[:12]} printable_share=0.2 in train:test: {garbage[:80]!r}",
        "  FAILED duplicate_share: expected duplicate share <= 0; observed 0.01667 (1 duplicate document(s))",
        f"    doc {doc_id(train[5])[:12]} in train:test, validation:test: {train[5][:80]!r}",
    ]
    result = json.loads((tmp_path / "reports" / "validation" / "result.json").read_text(encoding="utf-8"))
    assert result["success"] is False and (tmp_path / "reports" / "validation" / "index.html").is_file()
    assert (tmp_path / "reports" / "validation" / "gx" / "index.html").is_file()  # GX's Data Docs of the failed run
    logged = list((tmp_path / "mlartifacts").rglob("validation/result.json"))
    assert len(logged) == 1 and json.loads(logged[0].read_text(encoding="utf-8")) == result
    assert list((tmp_path / "mlartifacts").rglob("validation/gx/index.html"))
