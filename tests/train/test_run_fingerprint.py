"""A pretraining checkpoint resumes only under the code that wrote it (components/train/run.py)."""
from __future__ import annotations

from pathlib import Path

from components.config import ModelConfig, PretrainConfig
from components.train.run import SOURCE_ROOT, code_fingerprint, run_fingerprint


def _tree(root: Path) -> Path:
    for rel, text in {"components/a.py": "x = 1\n", "components/sub/b.py": "y = 2\n",
                      "pipelines/stage.py": "run()\n", "components/notes.md": "words\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_code_fingerprint_follows_every_source_file_and_nothing_else(tmp_path):
    root = _tree(tmp_path)
    before = code_fingerprint(root)
    assert code_fingerprint(root) == before
    (root / "components/notes.md").write_text("other words\n")
    assert code_fingerprint(root) == before  # not code
    (root / "components/sub/b.py").write_text("y = 3\n")
    edited = code_fingerprint(root)
    assert edited != before
    (root / "pipelines/stage.py").rename(root / "pipelines/renamed.py")
    assert code_fingerprint(root) not in (before, edited)
    assert code_fingerprint(SOURCE_ROOT) == code_fingerprint()  # the checkout's own code by default


def test_a_run_under_other_code_never_matches_its_checkpoints(tmp_path):
    (tmp_path / "meta.json").write_text('{"block_size": 32}')
    args = ("clm", ModelConfig(), PretrainConfig(), 7, tmp_path)
    assert run_fingerprint(*args, code="aaaa") == run_fingerprint(*args, code="aaaa")
    assert run_fingerprint(*args, code="aaaa") != run_fingerprint(*args, code="bbbb")
    assert run_fingerprint(*args) == run_fingerprint(*args, code=code_fingerprint())
