"""The documentation stands on its own: every relative link and anchor resolves inside the repository, every
repository path a doc names in code quotes exists, and no doc points at files users do not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", REPO / "bench" / "README.md", REPO / "systemd" / "README.md",
               *(REPO / "docs").glob("*.md")])

#: [text](target) links; images too
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: `path` quotes that name a file or folder of the repository
QUOTED_PATH = re.compile(r"`((?:ringstream|docs|bench|systemd|configs|tests)/[^`\s]*)`")
#: what a doc must not cite: files outside the repository that users do not have (the development specs)
FORBIDDEN = ("../shared", "shared/spec", "spec/MIDAS-COMPAT", "MIDAS-COMPAT", "spec/OUTPUTS.md", "spec/FIELD.md",
             "seeds/")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside a code block is an example, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchor of every heading of a markdown file: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            title = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_docs_are_found():
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "docs/DESIGN.md", "docs/DAEMON.md", "docs/MIDAS-FORMATS.md", "docs/OUTPUTS.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path):
    bad = []
    for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif REPO not in dest.parents and dest != REPO:
            bad.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, f"{doc.relative_to(REPO)}: broken links: " + "; ".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_repository_paths_exist(doc: Path):
    missing = []
    for path in QUOTED_PATH.findall(doc.read_text(encoding="utf-8")):
        if any(c in path for c in "<>*{}[]|"):  # a pattern or a placeholder, not a path
            continue
        path = path.split(":")[0].rstrip(".,;")
        if not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"{doc.relative_to(REPO)} names files that do not exist: {', '.join(sorted(set(missing)))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_citation_of_files_users_do_not_have(doc: Path):
    text = doc.read_text(encoding="utf-8")
    found = [s for s in FORBIDDEN if s in text]
    assert not found, f"{doc.relative_to(REPO)} cites {found}: put what users need into docs/ instead"
