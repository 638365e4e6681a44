"""mkdocs hook: render refconv's docstrings (plain text with doctests and Sphinx roles) as Markdown.

* consecutive ``>>>`` doctest lines and their output become a ``pycon`` code block
  (Markdown would otherwise read ``>>>`` as nested block quotes);
* Sphinx roles such as ``:func:`~refconv.attribute``` become inline code.

The extension is added to the Markdown extensions before mkdocstrings reads them,
so it applies to pages and to the API reference alike. No network access.
"""

from __future__ import annotations

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


class _DoctestFences(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        in_fence = False
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.lstrip()
            if stripped.startswith(("```", "~~~")):
                in_fence = not in_fence
            if not in_fence:
                line = _ROLE.sub(r"`\1`", line)
            if not in_fence and stripped.startswith(">>>"):
                indent = line[: len(line) - len(stripped)]
                block = []
                while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                    block.append(lines[i][len(indent):])
                    i += 1
                out += ["", indent + "```pycon", *(indent + b for b in block), indent + "```", ""]
                continue
            out.append(line)
            i += 1
        return out


class DoctestFenceExtension(Extension):
    def extendMarkdown(self, md):  # noqa: N802 - Markdown's API
        md.preprocessors.register(_DoctestFences(md), "refconv_doctest_fences", 40)


@event_priority(100)
def on_config(config):
    config.markdown_extensions.append(DoctestFenceExtension())
    return config
