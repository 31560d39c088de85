"""README.md and docs/: every `hitl` command shown exists with every flag it names (checked against the real
parser, entry-point commands such as `serve` included), and every relative link, picture and anchor resolves."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from trainer.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.S | re.M)  # diagrams and outputs: not commands
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _command_lines(text: str) -> list[str]:
    """Every shell line and code span that runs `hitl` (after optional VAR=value assignments)."""
    lines = []
    for block in SHELL.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += SPAN.findall(FENCE.sub("", text))
    found = []
    for line in lines:
        words = line.split("#", 1)[0].replace("\\|", "|").split()
        while words and ENV.match(words[0]):
            words = words[1:]
        if len(words) > 1 and words[0] == "hitl":
            found.append(" ".join(words))
    return found


def _commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in _command_lines(page.read_text())]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(line: str, parser: argparse.ArgumentParser | None = None) -> None:
    """Raise AssertionError naming the first subcommand or flag in ``line`` that the CLI does not have."""
    words = shlex.split(line.replace("|", " | ").replace("[", " ").replace("]", " "), posix=False)[1:]
    parsers = [parser or build_parser()]
    path = ["hitl"]
    while words and _subparsers(parsers[0]):
        alternatives = [words.pop(0)]
        while len(words) > 1 and words[0] == "|":  # `hitl bench step|predict --json`: each alternative
            words.pop(0)
            alternatives.append(words.pop(0))
        choices = _subparsers(parsers[0])
        missing = [a for a in alternatives if a not in choices]
        if missing:
            raise AssertionError(f"`{line}`: `{' '.join(path)}` has no subcommand {missing} (it has {sorted(choices)})")
        parsers = [choices[a] for a in alternatives]
        path.append("|".join(alternatives))
    for word in words:
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0].rstrip(".,;:)")
        if any(flag not in p._option_string_actions for p in parsers):
            raise AssertionError(f"`{line}`: `{' '.join(path)}` has no flag {flag}")


COMMANDS = _commands()


def test_the_pages_show_commands():
    assert len(COMMANDS) > 50 and {page for page, _ in COMMANDS} >= {"README.md", "docs/results.md"}


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_every_command_and_flag_shown_exists(page, line):
    check_command(line)


def test_the_check_refuses_a_renamed_flag_and_an_unknown_subcommand():
    check_command("hitl bench step|predict --json")
    with pytest.raises(AssertionError, match="no flag --per-rounds"):
        check_command("hitl init RUN --per-rounds 8")
    with pytest.raises(AssertionError, match="no subcommand"):
        check_command("hitl bench sprint --json")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


LINKS = [(page, target) for page in PAGES for target in LINK.findall(FENCE.sub("", page.read_text()))
         if not re.match(r"^[a-z]+:", target)]  # fmt: skip


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p.relative_to(ROOT)}: {t}" for p, t in LINKS])
def test_every_relative_link_and_picture_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{page.relative_to(ROOT)} links to {target}: no such heading"
