"""Every ``mrkd …`` command the documentation shows exists, with every option it names.

Reads README.md, docs/*.md and deployments/README.md: each line of a code block and each
inline code span whose command word is ``mrkd`` (or a path ending in ``/mrkd``, e.g.
``.venv/bin/mrkd``) is parsed by the parser users get (``mrkd_core.cli.build_parser``: a
command added there, by any module, is checked as soon as it exists). Nothing runs.

The synopsis conventions of the docs are understood: ``[...]`` optional parts (a bracket
that starts with a word, e.g. ``[config options]``, is prose and dropped), ``a|b``
alternatives (each one is checked), ``…``/``...`` elisions and ``X...`` repetitions.
What is checked:

- every subcommand exists, and every ``-x``/``--xx`` token is an option of that
  subcommand (or of ``mrkd`` itself), spelled in full (argparse would accept a prefix);
- a line of a code block parses completely (values of choices, types, nothing left
  over), unless it elides something with ``…``; an inline span may leave out required
  arguments (``mrkd train`` in a sentence), nothing else.

A paragraph that shows ``mrkd`` commands may also name options on their own
(``--no-evaluate``): each of those must be an option of some ``mrkd`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from mrkd_core.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deployments" / "README.md"]
ELISIONS = ("…", "...")


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str
    in_block: bool  # a line of a code block (typed as shown), not a span in a sentence
    tokens: tuple[str, ...] = ()  # the command as the shell splits it (quotes resolved)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


# --------------------------------------------------------------------------- reading the docs
def _code(text: str) -> list[tuple[int, str, bool, int]]:
    """(line number, code, in a block, paragraph number) of every code-block line and inline code span."""
    out = []
    inside = False
    paragraph = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        i += 1
        if line.strip().startswith("```"):
            inside = not inside
            paragraph += 1
            continue
        if inside:
            # A command continued on the next line (shell), or a synopsis's options on an indented line.
            while i < len(lines) and (line.rstrip().endswith("\\")
                                       or ("mrkd" in line and lines[i].strip().startswith("["))):
                line = line.rstrip().removesuffix("\\") + " " + lines[i].strip()
                i += 1
            out.append((number, line, True, paragraph))
            continue
        if not line.strip() or line.lstrip().startswith(("|", "- ", "* ")):  # table rows, list items
            paragraph += 1
        while line.count("`") % 2 and i < len(lines) and lines[i].strip() and "```" not in lines[i]:
            line += " " + lines[i].strip()  # a code span broken over two lines
            i += 1
        out.extend((number, m.group(1), False, paragraph) for m in re.finditer(r"`([^`\n]+)`", line))
    return out


def _segments(code: str) -> list[list[str]]:
    """The shell commands of a line (split at ``&&``, ``;``, pipes and ``&``), tokenised; comments dropped."""
    try:
        tokens = shlex.split(code, comments=True)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    segments, current = [], []
    for token in tokens:
        if token in ("&&", ";", "|", "||", "&"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    return [*segments, current]


def _mrkd_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after the ``mrkd`` command word (environment assignments skipped), or None."""
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    if len(tokens) < 2 or not (tokens[0] == "mrkd" or tokens[0].endswith("/mrkd")):
        return None
    return tokens[1:]


def documented_commands() -> tuple[list[DocCommand], dict[tuple[str, int], list[DocCommand]], list[tuple]]:
    """Every ``mrkd`` command of the docs, and the option-only spans of paragraphs that show one."""
    commands: list[DocCommand] = []
    by_paragraph: dict[tuple[str, int], list[DocCommand]] = {}
    lone_options = []
    for doc in DOCS:
        name = str(doc.relative_to(ROOT))
        for number, code, in_block, paragraph in _code(doc.read_text(encoding="utf-8")):
            for tokens in _segments(code):
                if _mrkd_argv(tokens) is not None:
                    cmd = DocCommand(name, number, shlex.join(tokens), in_block, tuple(tokens))
                    commands.append(cmd)
                    by_paragraph.setdefault((name, paragraph), []).append(cmd)
            if not in_block and re.fullmatch(r"--?[a-z][a-z0-9-]*(\s.*)?", code):
                lone_options.append((name, paragraph, number, code.split()[0]))
    lone = [(f"{d}:{n}: `{opt}`", opt) for d, p, n, opt in lone_options if (d, p) in by_paragraph]
    return commands, by_paragraph, lone


# --------------------------------------------------------------------------- synopsis → argv
def _expand(argv: list[str]) -> tuple[list[list[str]], bool]:
    """Concrete argv lists for a synopsis (one per combination of alternatives), and whether it elides."""
    flat: list[str] = []
    elided = False
    prose: list[bool] = []  # per open bracket: does it hold prose ("[config options]")?
    for token in argv:
        core = token.lstrip("[")
        prose += [not core.startswith("-")] * (len(token) - len(core))
        if core.strip(".…[]") == "":
            elided = elided or any(e in core for e in ELISIONS)
            closing = core.count("]")
            core = ""
        else:
            closing = 0
            while core and core[-1] in ".…]":  # "IMAGES...", "CAT]...", "auto]"
                closing += core[-1] == "]"
                core = core[:-1]
        if core and not any(prose):
            flat.append(core)
        del prose[len(prose) - min(closing, len(prose)):]
    alternatives = [t.split("|") if "|" in t and "://" not in t else [t] for t in flat]
    return [list(choice) for choice in itertools.islice(itertools.product(*alternatives), 64)], elided


# --------------------------------------------------------------------------- the checks
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Option tokens that are not, spelled in full, an option of the subcommand they follow."""
    chain = [parser]
    for token in argv:
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            continue
        sub = _subparsers(chain[-1])
        if token in sub:
            chain.append(sub[token])
        elif sub:  # a word where a subcommand belongs: argparse names it below
            break
    known = set(chain[0]._option_string_actions) | set(chain[-1]._option_string_actions)
    return [t for t in argv if t.startswith("-") and not re.fullmatch(r"-\d.*", t) and t.split("=")[0] not in known]


def _parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """argparse's message for ``argv`` (None when it parses; ``--help`` parses)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def check(parser: argparse.ArgumentParser, cmd: DocCommand) -> list[str]:
    """What is wrong with one documented command (empty when it is right)."""
    tokens = list(cmd.tokens) or next(t for t in _segments(cmd.text) if _mrkd_argv(t) is not None)
    argv = _mrkd_argv(tokens)
    problems = []
    expansions, elided = _expand(argv)
    for concrete in expansions:
        error = _parse_error(parser, concrete)
        unknown = _unknown_options(parser, concrete)
        if unknown and not (error and "invalid choice" in error):  # else: a subcommand that does not exist
            problems.append(f"{cmd}: no option {', '.join(unknown)} in `mrkd {' '.join(concrete[:2])}`")
        elif error and not ((elided or not cmd.in_block) and "arguments are required" in error) \
                and not (elided and "expected one argument" in error) \
                and not _placeholder_value(error):  # "-o …": the value elided; "--port N": a placeholder
            problems.append(f"{cmd}: `mrkd {' '.join(concrete)}` → {error}")
    return problems


def _placeholder_value(error: str) -> bool:
    """argparse refused a synopsis's placeholder (``--gpus-per-replica N``, ``--engine E``) as a value:
    the option exists; what the user puts there is named, not shown."""
    m = re.search(r"invalid (?:choice|\w+ value): '([^']*)'", error)
    return bool(m and re.fullmatch(r"[A-Z][A-Z0-9_]*", m.group(1)))


def all_options(parser: argparse.ArgumentParser) -> set[str]:
    found = set(parser._option_string_actions)
    for sub in _subparsers(parser).values():
        found |= all_options(sub)
    return found


# --------------------------------------------------------------------------- tests
def test_every_documented_mrkd_command_exists_with_its_options():
    parser = build_parser()
    commands, _, _ = documented_commands()
    assert len(commands) > 60 and any(c.in_block for c in commands)  # the reader finds the docs' commands
    problems = [p for cmd in commands for p in check(parser, cmd)]
    assert not problems, "\n".join(problems)


def test_options_named_beside_mrkd_commands_exist():
    """``--no-calibrate`` was named in docs/inference.md next to `mrkd calibrate`; no command had it."""
    known = all_options(build_parser())
    _, _, lone = documented_commands()
    assert lone  # the docs do name options on their own
    missing = [where for where, option in lone if option not in known]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("line, fragment", [
    ("mrkd train --no-calibrate DATA", "no option --no-calibrate"),
    ("mrkd trian DATA -o models", "invalid choice: 'trian'"),
    ("mrkd calibrate MODEL DATA -o OUT.pt --policy best", "invalid choice: 'best'"),
    ("mrkd calibrate MODEL DATA -o OUT.pt [--policy auto|f2]", "invalid choice: 'f2'"),
    ("mrkd predict MODEL IMAGES --batch-siz 4", "no option --batch-siz"),
    ("mrkd models lst", "invalid choice: 'lst'"),
    ("mrkd export MODEL", "required: --output"),
    ("mrkd serve MODEL --engine tensorrt", "invalid choice: 'tensorrt'"),
])
def test_the_checker_catches_what_it_is_for(line, fragment):
    problems = check(build_parser(), DocCommand("x.md", 1, line, in_block=True))
    assert problems and fragment in problems[0], problems


@pytest.mark.parametrize("line", [
    "mrkd train DATA [-o STORE] [-c CAT]... [--run-id ID] [--no-resume] [--no-evaluate] [config options]",
    "mrkd predict MODEL IMAGES... -o OUT [--skip-unreadable] [--batch-size 8] [--engine auto|onnxruntime|openvino]",
    "mrkd train … --register NAME",
    "mrkd evaluate -o …",
    ".venv/bin/mrkd models list --store s3://mrkd/prod",
    "MRKD_STORE=/data/x mrkd evaluate DATA",
    "mrkd serve bracket@champion --store models --follow-seconds 5 &",
    "mrkd models promote models/m/folder/c@2 --reason '5 epochs'",
    "mrkd serve MODEL --engine E --cpus-per-replica 1 --gpus-per-replica N",
])
def test_the_checker_reads_the_docs_synopsis_conventions(line):
    assert check(build_parser(), DocCommand("x.md", 1, line, in_block=True)) == []


def test_every_make_target_the_documentation_names_exists():
    """``make demo``, ``make test``, ``make setup``, ``make bench`` in a code span or block: each is a
    target of the Makefile (``make -n``: nothing runs)."""
    import subprocess

    named = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL) + re.findall(r"`([^`\n]+)`", text)
        for span in spans:
            named.update(re.findall(r"(?:^|[\s;&(])make ([a-z][a-z-]*)\b", span, re.MULTILINE))
    assert {"demo", "test", "setup"} <= named, named
    for target in sorted(named):
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True)
        assert proc.returncode == 0, f"make {target}: {proc.stderr.strip()}"
