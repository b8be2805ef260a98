"""The docs keep up with the CLI: every command and every option is documented in docs/, the README
stays a short tour that links the reference."""
from __future__ import annotations

import re

import click
import pytest

from conftest import REPO
from kpconv.cli import cli

DOCS = REPO / "docs"


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def _commands():
    return sorted(cli.commands.items())


@pytest.mark.parametrize("name, command", _commands(), ids=[n for n, _ in _commands()])
def test_every_command_and_option_is_documented(name, command):
    text = _docs_text()
    assert f"kpconv {name}" in text, f"docs/: no mention of 'kpconv {name}'"
    missing = [opt for p in command.params if isinstance(p, click.Option)
               for opt in p.opts + p.secondary_opts if opt.startswith("--")
               and not re.search(re.escape(opt) + r"(?![\w-])", text)]
    assert not missing, f"kpconv {name}: options not in docs/: {missing}"
    assert command.help, f"kpconv {name} has no --help text"


def test_global_options_are_documented():
    text = _docs_text()
    for p in cli.params:
        for opt in p.opts:
            if opt.startswith("--"):
                assert opt in text, f"global option {opt} not in docs/"


def test_readme_is_a_short_tour_that_links_the_reference():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in ("docs/index.md", "docs/ingest.md", "docs/formats.md", "docs/shard.md", "docs/commands.md",
                 "docs/benchmarks.md", "docs/predict.md", "docs/training.md"):
        assert f"({page}" in readme, f"README does not link {page}"
    for name, _ in _commands():
        assert f"`kpconv {name}`" in readme, f"README command table lacks kpconv {name}"


def test_every_format_has_its_page():
    """docs/formats/<name>.md for every registered reader, linked from docs/formats.md."""
    from kpconv.data import formats

    index = (DOCS / "formats.md").read_text(encoding="utf-8")
    for name in formats.names():
        page = DOCS / "formats" / f"{name}.md"
        assert page.is_file(), f"no docs/formats/{name}.md"
        assert f"(formats/{name}.md)" in index, f"docs/formats.md does not link formats/{name}.md"
        text = page.read_text(encoding="utf-8")
        for part in ("## What is read", "## Grouping", "## What is reported"):
            assert part in text or name == "kpconv-json", f"docs/formats/{name}.md lacks '{part}'"
