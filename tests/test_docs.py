"""The README and docs/ pages: every command line they show parses with the real parser
(flags that exist, values of the right type), and every relative link leads to a file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from implicit_sparsity.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands(page: Path) -> list[str]:
    """The `implicit-sparsity ...` lines of a page's code blocks and code spans, continuations
    joined;
    synopsis lines with placeholders ([optional], A|B, ...) are left out."""
    text = re.sub(r"\\\n\s*", " ", page.read_text())
    inline = re.findall(r"`((?:\.venv/bin/)?implicit-sparsity [^`]+)`", text)
    commands = []
    for line in text.splitlines() + inline:
        line = line.strip().split("   #")[0].strip()
        line = re.sub(r"^\.venv/bin/", "", line)
        if not line.startswith("implicit-sparsity ") or re.search(r"[\[\]|<>]|\.\.\.", line):
            continue
        if len(line.split()) < 3:  # `implicit-sparsity compare` names a command in prose
            continue
        commands.append(line.split(" && ")[0].split(" # ")[0])
    return list(dict.fromkeys(commands))


COMMANDS = [(page.name, c) for page in PAGES for c in shown_commands(page)]


def test_the_pages_show_commands():
    assert len(COMMANDS) >= 15
    assert {page for page, _ in COMMANDS} >= {"README.md", "removing.md", "reproducing.md"}


@pytest.mark.parametrize("page, command", COMMANDS)
def test_every_command_shown_parses(page, command, capsys):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exit_:
        pytest.fail(f"{page}: `{command}` does not parse: {capsys.readouterr().err.strip()}"
                    f" (exit {exit_.code})")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
