"""The docs stay a manual: a README that fits, links that resolve, records about the project only."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_manual_of_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_relative_links_resolve_and_no_doc_narrates_how_it_was_built():
    for doc in DOCS:
        text = doc.read_text()
        assert not re.search(r"\bsessions?\b", text, re.IGNORECASE), doc
        for target, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", text):
            assert (doc.parent / target).exists(), (doc, target)
            if anchor:
                assert anchor in _anchors(doc.parent / target), (doc, target, anchor)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
