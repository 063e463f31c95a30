"""Bad input to `python -m pipelines.ingest`: one line naming the file (and line) and the fix,
exit 1, and nothing written. Each case runs the real stage in a fresh working directory."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))


def _jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


OK = {"text": "A perfectly good first document of the corpus."}

# case -> (file name or None, bytes to write, what data.source is, fragments the error must hold)
CASES = {
    "missing_path": (None, None, "nowhere/corpus.jsonl", ["nowhere/corpus.jsonl' does not exist", "give a file"]),
    "empty_directory": ("empty/", None, "empty", ["data.source: no .txt, .jsonl", "files in", "empty'; add some or fix the path"]),
    "binary_file": ("image.txt", PNG, "image.txt", ["image.txt, line 3: NUL byte", "give UTF-8 text files"]),
    "not_utf8": ("latin1.txt", "Caf\u00e9\nna\u00efve\n".encode("latin-1"), "latin1.txt",
                 ["latin1.txt, line 1: not UTF-8 (byte 0xe9)", "convert it to UTF-8"]),
    "jsonl_not_json": ("docs.jsonl", _jsonl(OK) + b'{"text": "unterminated\n', "docs.jsonl",
                       ["docs.jsonl, line 2: not valid JSON", "fix or remove the line"]),
    "jsonl_lacks_field": ("docs.jsonl", _jsonl(OK, OK, {"body": "wrong field"}), "docs.jsonl",
                          ["docs.jsonl, line 3: no field 'text' (fields: body)", "set data.text_column"]),
    "text_not_string": ("docs.jsonl", _jsonl(OK, {"text": ["a", "list"]}), "docs.jsonl",
                        ["docs.jsonl, line 2: field 'text' must be a string, got list", "fix the line"]),
    "nul_bytes": ("docs.jsonl.gz", gzip.compress(_jsonl(OK) + b'{"text": "nul \x00 inside"}\n', mtime=0),
                  "docs.jsonl.gz", ["docs.jsonl.gz, line 2: NUL byte", "give UTF-8 text files"]),
    "empty_corpus": ("empty.jsonl", b"", "empty.jsonl",
                     ["data.source 'empty.jsonl': no documents (0 read, 0 shorter than data.min_chars=20)",
                      "give a non-empty corpus"]),
    "only_short_documents": ("short.jsonl", _jsonl({"text": "too short"}, {"text": ""}), "short.jsonl",
                             ["no documents (2 read, 2 shorter than data.min_chars=20)"]),
    "one_huge_line": ("huge.jsonl", _jsonl(OK) + b'{"text": "' + b"a" * (64 * 2**20 + 10) + b'"}\n', "huge.jsonl",
                      ["huge.jsonl, line 2: a line longer than 64 MiB", "split it into documents"]),
    "hf_not_cached_offline": (None, None, "hf:lmforge-tests/no-such-corpus",
                              ["'hf:lmforge-tests/no-such-corpus': not in the local datasets cache",
                               "OfflineModeIsEnabled", "save_to_disk() it"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case's stage run, started together (each is ~1 s of interpreter start-up)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LMFORGE_DEBUG": ""}
    started = {}
    for case, (name, content, source, _fragments) in CASES.items():
        cwd = tmp_path_factory.mktemp(case)
        if name and name.endswith("/"):
            (cwd / name).mkdir()
        elif name:
            (cwd / name).write_bytes(content)
        (cwd / "params.yaml").write_text(f"profile: tiny\ndata:\n  source: {source}\n", encoding="utf-8")
        case_env = {**env, "HF_HOME": str(cwd / "hf"), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
        started[case] = (cwd, subprocess.Popen(
            [sys.executable, "-m", "pipelines.ingest", "--params", "params.yaml"], cwd=cwd, env=case_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = {}
    for case, (cwd, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[case] = (cwd, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_1_and_no_outputs(case, runs):
    cwd, proc = runs[case]
    fragments = CASES[case][3]
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ingest: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (cwd / "data" / "corpus").exists() and not (cwd / "data" / "downstream").exists()
    assert not (cwd / "reports").exists() and not (cwd / "mlflow.db").exists()
    leftovers = list((cwd / "data").rglob("*")) if (cwd / "data").exists() else []
    assert leftovers == []  # no temporary directories either
