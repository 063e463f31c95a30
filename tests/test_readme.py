"""The README's code tour and commands stay true to the repository."""
from __future__ import annotations

import re


def test_code_tour_paths_exist(repo_root):
    readme = (repo_root / "README.md").read_text()
    tour = readme.split("## Code tour", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| (.+?) \|", tour, flags=re.M)
    names = [n.strip("`") for cell in cells for n in re.findall(r"`([^`]+)`", cell)]
    assert len(names) >= 15
    for name in names:
        base = name.split("<")[0].rstrip("/")
        if base.endswith(".py") and "/" not in base:  # "stdlib_docs.py" after "components/corpus.py,"
            base = f"components/{base}"
        assert (repo_root / base).exists(), name


def test_the_two_commands_are_make_targets(repo_root):
    readme = (repo_root / "README.md").read_text()
    makefile = (repo_root / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^demo: install$", makefile, flags=re.M) and re.search(r"^test: install$", makefile, flags=re.M)
    assert "make test" in (repo_root / ".ci" / "run").read_text()
