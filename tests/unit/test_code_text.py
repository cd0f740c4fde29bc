"""The package's comments, docstrings and messages stand on their own: they cite the repository's docs, not
files users do not have or issue numbers, and the configuration's docstrings name every section of the option
table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ringstream
from ringstream.config import SECTIONS

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(ringstream.__file__).resolve().parent

#: what the package's text must not contain: the development specs, the MIDAS manual by section number (not in
#: the repository: docs/MIDAS-FORMATS.md says what it says), issue tags, benchmark hosts
FORBIDDEN = re.compile(r"MIDAS-COMPAT|spec/|shared/|seeds/|FIELD\.md|[Mm]anual \d|\bissue \d|H100|H200")


def test_no_citation_of_files_users_do_not_have():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {line.strip()}")
    assert not found, "cite docs/ instead:\n" + "\n".join(found)


@pytest.mark.parametrize("module", ["__init__.py", "schema.py"])
def test_config_docstrings_name_every_section(module: str):
    text = (PACKAGE / "config" / module).read_text(encoding="utf-8")
    docstring = text.split('"""')[1]
    missing = [name for name in SECTIONS if f"``[{name}]``" not in docstring]
    assert not missing, f"ringstream/config/{module}: its docstring does not name {missing}"
