"""``systemd/example.toml``, made from the option table: every section and key with its default and meaning.

Regenerate the committed file after changing the table (a test fails while they differ)::

    python -m ringstream.config.example > systemd/example.toml
"""

from __future__ import annotations

import sys
import textwrap

from .load import toml_value
from .schema import OPTIONS, SECTIONS, Option

HEADER = """\
# /etc/ringstream/<name>.toml: configuration of ringstream@<name>.service (`ringstream run --config FILE`).
# Every key is optional except [run] param_file; the values shown are the defaults unless marked "example".
# Precedence: these defaults < this file < RINGSTREAM_<SECTION>_<KEY> in the environment < the command line.
# Check it without starting anything:  ringstream check-config --config /etc/ringstream/<name>.toml
# Relative input paths (param_file, dark, replay_path, folder, file) are looked up next to this file first;
# relative output paths are relative to the working directory (/var/lib/ringstream under systemd).
# Generated from the option table (ringstream/config/schema.py): python -m ringstream.config.example
"""

WIDTH = 120  # longest line
COLUMN = 32  # where the comments start


def _comment_lines(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH - indent - 2, break_long_words=False, break_on_hyphens=False)


def _key_lines(o: Option) -> list[str]:
    value, comment = o.default, o.describe()
    if o.example is not None:
        value, comment = o.example, f"example (default {toml_value(o.default)}); {comment}"
    text = f"{o.key} = {toml_value(value)}"
    text = text.ljust(COLUMN) if len(text) < COLUMN - 1 else text + "   "
    first, *rest = _comment_lines(comment, len(text))
    return [f"{text}# {first}"] + [" " * len(text) + f"# {line}" for line in rest]


def example_toml() -> str:
    """The text of ``systemd/example.toml``: a valid configuration naming every key."""
    lines = HEADER.splitlines()
    for section, cls in SECTIONS.items():
        lines.append("")
        doc = " ".join((cls.__doc__ or "").split())
        lines += [f"# {line}" for line in _comment_lines(doc, 0)]
        lines.append(f"[{section}]")
        for o in OPTIONS:
            if o.section == section:
                lines += _key_lines(o)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(example_toml())
