"""Every command shown in the README and in docs/ parses with today's parsers, and every subcommand answers --help.

The shell blocks of the docs are read line by line (continuations joined, comments and `...` dropped, `<...>`
placeholders filled); each `isd ...`, `python -m isd ...`, `torchrun ... -m isd ...` and original-script command
is parsed by the parser that would run it, and its `--set KEY=VALUE` keys must be config keys. Nothing runs.
"""

from __future__ import annotations

import argparse
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from conftest import ROOT
from isd.cli.legacy_eval import SCRIPTS as EVAL_SCRIPTS
from isd.cli.legacy_eval import legacy_parser as eval_parser
from isd.cli.legacy_train import SCRIPTS as TRAIN_SCRIPTS
from isd.cli.legacy_train import legacy_parser as train_parser
from isd.cli.main import build_parser
from isd.config import ALIASES, FIELDS

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {**{s: train_parser for s in TRAIN_SCRIPTS}, **{s: eval_parser for s in EVAL_SCRIPTS}}


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of the shell code blocks (``` without a language, or sh/bash), continuations
    joined."""
    out, fenced, shell, pending, start = [], False, False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            fenced, shell = not fenced, not fenced and line.strip()[3:] in ("", "sh", "bash", "shell")
            continue
        if not shell:
            continue
        if not pending:
            start = number
        pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append((start, pending))
            pending = ""
    return out


def command_of(line: str) -> tuple[str, list[str]] | None:
    """('isd' or a script name, its arguments), or None for another program."""
    line = re.sub(r"<[^>]*>", "PLACEHOLDER", line.strip().removeprefix("$ "))
    try:
        words = [w for w in shlex.split(line, comments=True) if w != "..."]
    except ValueError:
        return None
    segments, current = [], []
    for word in words:  # a && b ; c | d: each part on its own
        if word in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    for words in [*segments, current]:
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value command ...
            words = words[1:]
        if any(w.endswith(":") for w in words[:2]):  # a line the command printed (isd train: error: ...)
            return None
        if words[:1] == ["isd"]:
            return "isd", words[1:]
        if "-m" in words and words[words.index("-m") + 1:words.index("-m") + 2] == ["isd"]:
            return "isd", words[words.index("-m") + 2:]
        scripts = [i for i, w in enumerate(words) if Path(w).name in SCRIPTS]
        if scripts and Path(words[0]).name in ("python", "python3", "torchrun", "srun"):
            return Path(words[scripts[0]]).name, words[scripts[0] + 1:]
    return None


def documented_commands() -> list[tuple[str, int, str, list[str], str | None]]:
    """(file, line, program, arguments, the error line the docs show it printing, if any)."""
    found = []
    for path in DOCS:
        lines = shell_lines(path.read_text())
        for (number, line), (_, after) in zip(lines, [*lines[1:], (0, "")]):
            command = command_of(line)
            if command is not None:
                shown = after if re.match(r"\S+( \S+)?: error: ", after) else None
                found.append((path.relative_to(ROOT).as_posix(), number, *command, shown))
    return found


def parse(program: str, args: list[str]) -> argparse.Namespace | None:
    """The parsed command line (None for --help); SystemExit with the parser's message if it does not parse."""
    parser = build_parser() if program == "isd" else SCRIPTS[program](program)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit as exit_:
        if exit_.code == 0 and "usage:" in out.getvalue():
            return None
        raise AssertionError(err.getvalue().strip() or out.getvalue().strip()) from None


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind():
    programs = {program for _, _, program, _, _ in COMMANDS}
    subcommands = {args[0] for _, _, program, args, _ in COMMANDS if program == "isd" and args}
    assert {"isd", "train_isd.py", "train_isd_plus.py", "train_byol.py", "eval_knn.py", "eval_linear.py"} <= programs
    assert {"train", "recipes", "knn", "linear", "export", "experiment", "report", "neighbors", "clusters"} <= \
        subcommands
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize("where, line, program, args, shown", COMMANDS,
                         ids=[f"{w}:{n}" for w, n, *_ in COMMANDS])
def test_every_documented_command_parses(where, line, program, args, shown):
    """... or, where the docs show it failing with a flag error, fails with exactly that line."""
    try:
        parsed = parse(program, args)
    except AssertionError as err:
        assert shown == str(err), f"{where}:{line}: {err}"
        return
    overrides = getattr(parsed, "set", None) or []
    keys = {pair.split("=", 1)[0].replace("-", "_") for pair in overrides}
    assert keys <= set(FIELDS) | set(ALIASES), f"{where}:{line}: unknown --set keys {keys - set(FIELDS)}"


def subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("program, args", [("isd", []), *[("isd", [name]) for name in subcommands()],
                                           *[(script, []) for script in SCRIPTS]])
def test_every_command_answers_help(program, args):
    assert parse(program, [*args, "--help"]) is None


def test_the_extraction_reads_what_a_reader_would_type():
    text = ("```\nCUDA_VISIBLE_DEVICES=0,1 python train_isd.py --epochs 5 \\\n  --arch resnet18 /data  # note\n"
            "mkdir -p x && isd train x --set ema=0.9 ...\n$ isd knn CKPT DATA\nmake test\n"
            "isd train: error: what it printed\n```\n```python\nisd.load_backbone(x)\n```\nisd prose\n")
    commands = [command_of(line) for _, line in shell_lines(text)]
    assert commands == [("train_isd.py", ["--epochs", "5", "--arch", "resnet18", "/data"]),
                        ("isd", ["train", "x", "--set", "ema=0.9"]), ("isd", ["knn", "CKPT", "DATA"]), None, None]
    with pytest.raises(AssertionError, match="invalid choice"):
        parse("isd", ["train", "--arch", "vgg16"])
