"""The README's code tour and commands stay true to the repository."""
from __future__ import annotations

import re


def test_code_tour_paths_exist(repo_root):
    readme = (repo_root / "README.md").read_text()
    tour = readme.split("## Code tour", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| (.+?) \|", tour, flags=re.M)
    checked = 0
    for cell in cells:
        folder = ""
        for name in re.findall(r"`([^`]+)`", cell):
            base = name.split("<")[0].rstrip("/")
            if "/" in base:
                folder = base.rsplit("/", 1)[0] if base.endswith(".py") else base
            elif base.endswith(".py"):  # "stdlib_docs.py" after "components/data/corpus.py,"
                base = f"{folder}/{base}"
            assert (repo_root / base).exists(), name
            checked += 1
    assert checked >= 15


def test_the_two_commands_are_make_targets(repo_root):
    readme = (repo_root / "README.md").read_text()
    makefile = (repo_root / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^demo: install$", makefile, flags=re.M) and re.search(r"^test: install$", makefile, flags=re.M)
    assert "make test" in (repo_root / ".ci" / "run").read_text()
