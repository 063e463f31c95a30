"""`lmforge run --pools` refuses, in one line and before writing anything, a checkout whose
workers could not reproduce it: uncommitted code, or no git commit at all."""
from __future__ import annotations

import subprocess

import pytest

from cli.main import main
from flows.pools import SourceNotShareable, source

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]


def _repo(tmp_path):
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["commit", "-qm", "c"], cwd=tmp_path, check=True)
    return tmp_path


def test_uncommitted_code_is_named_but_params_yaml_may_differ(tmp_path):
    repo = _repo(tmp_path)
    (repo / "params.yaml").write_text("profile: demo\n")
    assert source(repo, remote_url="/some/remote").remote_url == "/some/remote"
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(SourceNotShareable, match=r"code\.py differ from commit .*commit \(and push"):
        source(repo, remote_url="/some/remote")


def test_the_cli_says_it_in_one_line_and_writes_nothing(tmp_path, capsys):
    repo = _repo(tmp_path)
    (repo / "code.py").write_text("x = 2\n")
    before = (repo / "params.yaml").read_text()
    assert main(["--repo", str(repo), "run", "--pools", "--profile", "demo", "--dvc-remote", "/r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: lmforge run --pools:") and "code.py" in err[0]
    assert (repo / "params.yaml").read_text() == before


def test_no_git_commit_is_refused(tmp_path):
    with pytest.raises(SourceNotShareable, match="not a git repository with a commit"):
        source(tmp_path, remote_url="/r")
