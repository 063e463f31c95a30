"""Every link in README.md and docs/*.md points at a file (and heading) inside the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    heads = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(md):
    links = LINK.findall(re.sub(r"```.*?```", "", md.read_text(), flags=re.S))
    broken = []
    for link in links:
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (md.parent / target).resolve() if target else md
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{link}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading '#{anchor}' in {path.relative_to(ROOT)}")
    assert broken == [], f"{md.name}: {broken}"


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_points_outside_the_repository(md):
    text = md.read_text()
    # Any "../x" path, link or not, must resolve inside the repository; no absolute machine paths.
    outside = [m for m in re.findall(r"(?:\.\./)+[\w.-]+", text) if not (md.parent / m).resolve().is_relative_to(ROOT)]
    assert outside == [] and not re.search(r"(?<![\w.])/(work|home|root|tmp)/", text)


def test_the_readme_stays_short_with_the_code_tour_before_the_reference():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    assert readme.index("## How it fits together") < readme.index("## Code tour") < readme.index("## Reference")
    for md in DOCS[1:]:
        assert f"(docs/{md.name})" in readme, f"the README does not link {md.name}"
