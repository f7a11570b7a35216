"""Docs that cannot rot silently: every relative link in README.md and docs/*.md resolves (to a
file, and for `#anchor` links to a heading of that file), every `lsearch COMMAND ... --option`
the pages quote names a command and options that the command's `--help` lists, and the README
stays short enough to read in one sitting."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsearch.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)")
# Fenced blocks in these languages hold shell commands; others (python, toml, text) do not.
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SHORT_OPTION = re.compile(r"(?<![\w-])-[a-zA-Z](?![\w-])")
# Programs that run the next word as a command: `/usr/bin/time lsearch run`.
WRAPPERS = {"time", "sudo", "exec", "nohup", "env"}


def _split_page(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The page's prose lines (fenced blocks blanked out) and its fenced blocks, each as
    (language, lines)."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
            blocks.append((match.group(3).lower(), []))
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1][1].append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: formatting and punctuation dropped,
    lower case, spaces as hyphens (letters such as ε are kept).

    >>> github_slug("Speed and `lsearch bench`")
    'speed-and-lsearch-bench'
    >>> github_slug("Comparisons: is this ε better than that one?")
    'comparisons-is-this-ε-better-than-that-one'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in a page, duplicates numbered as GitHub numbers them."""
    prose, _ = _split_page(page.read_text())
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The link targets of a page outside code that are neither URLs nor e-mail addresses."""
    prose, _ = _split_page(page.read_text())
    text = INLINE_CODE.sub("", "\n".join(prose))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(REPO)}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def _commands_in_shell(lines: list[str]) -> list[str]:
    """Shell command lines of a fenced block: continuations joined, prompts and comments
    removed, split at `&&`, `;` and pipes."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    commands: list[str] = []
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        line = re.sub(r"(^|\s)#.*$", "", line)
        commands.extend(re.split(r"&&|\|\||;|\s\|\s", line))
    return commands


def lsearch_invocation(command: str) -> tuple[str, list[str]] | None:
    """(command name, options) when a shell command runs `lsearch NAME ...`, else None."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote: a sketch of a command, read word by word
        words = command.split()
    while words and (ENV_ASSIGNMENT.match(words[0]) or Path(words[0]).name in WRAPPERS):
        words = words[1:]
    if len(words) < 2 or Path(words[0]).name != "lsearch":
        return None
    rest = " ".join(w for w in words[2:] if not w.startswith(("'", '"')))
    options = [m.split("=")[0] for m in LONG_OPTION.findall(rest)] + SHORT_OPTION.findall(rest)
    return words[1], options


def quoted_invocations(page: Path) -> list[tuple[str, str, list[str]]]:
    """(quote, command, options) for every `lsearch COMMAND ...` a page quotes, in shell code
    blocks and in inline code."""
    prose, blocks = _split_page(page.read_text())
    commands = [
        command
        for language, lines in blocks
        if language in SHELL_LANGUAGES
        for command in _commands_in_shell(lines)
    ]
    for line in prose:
        for match in INLINE_CODE.finditer(line):
            commands.extend(re.split(r"&&|;|\s\|\s", match.group(2)))
    found = []
    for command in commands:
        invocation = lsearch_invocation(command.strip())
        if invocation:
            found.append((command.strip(), *invocation))
    return found


@functools.cache
def command_help(name: str) -> str | None:
    """`lsearch NAME --help` on a wide terminal, or None when there is no such command."""
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    return result.output if result.exit_code == 0 else None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_commands_and_options_exist(page: Path) -> None:
    wrong = []
    for quote, name, options in quoted_invocations(page):
        text = command_help(name)
        if text is None:
            wrong.append(f"`{quote}`: no command `lsearch {name}`")
            continue
        listed = set(LONG_OPTION.findall(text)) | set(SHORT_OPTION.findall(text))
        missing = [option for option in options if option not in listed]
        if missing:
            wrong.append(f"`{quote}`: `lsearch {name} --help` lists no {', '.join(missing)}")
    assert not wrong, f"{page.relative_to(REPO)}:\n" + "\n".join(wrong)


def test_the_check_finds_commands_and_catches_a_wrong_option(tmp_path: Path) -> None:
    """The checks above see what they should: commands in blocks and inline, options after
    continuations, and nothing in Python code or in prose."""
    page = tmp_path / "page.md"
    page.write_text(
        "Run `lsearch compare --grid label_smoothing=0,0.1 --seeds 0-4` or `lsearch.run(...)`.\n"
        "```bash\n"
        "LSEARCH_STORAGE=sqlite:///x.db \\\n"
        "    .venv/bin/lsearch run --trials 3 --no-such-option  # a --comment\n"
        "lsearch status && lsearch best --json\n"
        "```\n"
        "```python\n"
        "import lsearch\n"
        "lsearch run --not-checked\n"
        "```\n"
        "## A heading\n"
        "[here](#a-heading) and [there](missing.md)\n"
    )
    found = {(name, tuple(options)) for _, name, options in quoted_invocations(page)}
    assert found == {
        ("compare", ("--grid", "--seeds")),
        ("run", ("--trials", "--no-such-option")),
        ("status", ()),
        ("best", ("--json",)),
    }
    assert "--no-such-option" not in (command_help("run") or "")
    assert "--trials" in (command_help("run") or "")
    assert command_help("no-such-command") is None
    assert relative_links(page) == ["#a-heading", "missing.md"]
    assert anchors(page) == {"a-heading"}


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
