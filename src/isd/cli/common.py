"""What every entry point shares: one-line errors that name the flags its user typed, no traceback for bad input,
and the one way a command line's flags become settings (config keys) and settings become flags again."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isd.errors import RunStopped, UsageError


def one_line(message: object) -> str:
    """The message with every line break and other unprintable character escaped as Python does (\\n, \\x85,
    \\udcff...): a value typed on the command line can hold any of them, and the error must stay one line."""
    text = str(message)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line naming the flag and where to look, not the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def add_trust_flag(parser: argparse.ArgumentParser, what: str = "CKPT") -> None:
    """The opt-out of the safe checkpoint reader (setting `trust_checkpoint_code`), named so that nobody sets it
    by accident."""
    parser.add_argument("--trust-checkpoint-code", action="store_true", help=f"unpickle {what} without the safe "
                        f"reader's limits, which lets a crafted file run code: only for a file you made or whose "
                        f"source you trust")


def the_key(key: str) -> str:
    return key


@dataclass
class Flags:
    """One command line's names for the settings it takes.

    Every flag stands for the setting of its argparse dest, or of `keys[dest]` where the two differ (the original
    scripts' `--learning_rate` is `lr`). `values(args)` turns a parsed command line into settings; `name(key)`
    turns a setting named in an engine error back into what this command line's user typed (`--batch-size`,
    `--batch_size`, `-b/--batch-size`, `DATA`), or `otherwise(key)` for a setting it has no flag for.
    """

    parser: argparse.ArgumentParser
    keys: Mapping[str, str] = field(default_factory=dict)
    otherwise: Callable[[str], str] = the_key
    ignored: Iterable[str] = ()  # dests that are no settings (accepted for compatibility, or read by the CLI)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings given on the command line: every flag not left at None, under its setting's key."""
        skip = set(self.ignored)
        return {self.keys.get(dest, dest): value for dest, value in vars(args).items()
                if value is not None and dest not in skip and dest in self._dests()}

    def name(self, key: str) -> str:
        spelled = [self._spelling(a) for a in self._actions() if self.keys.get(a.dest, a.dest) == key]
        return " / ".join(spelled) if spelled else self.otherwise(key)

    def _actions(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions if a.dest not in (argparse.SUPPRESS, "help")]

    def _dests(self) -> set[str]:
        return {a.dest for a in self._actions()}

    @staticmethod
    def _spelling(action: argparse.Action) -> str:
        if not action.option_strings:
            return str(action.metavar or action.dest.upper())
        short = [o for o in action.option_strings if not o.startswith("--")]
        long = [o for o in action.option_strings if o.startswith("--") and o[1:] not in short]  # -k, not -k/--k
        return "/".join(short + long)


def tolerant_output() -> None:
    """stdout as stderr already is: a path typed in a non-UTF-8 encoding (undecodable bytes arrive as surrogates)
    is printed with backslash escapes instead of raising UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_guarded(fn: Callable[[], int], prog: str, name: Callable[[str], str] = the_key) -> int:
    """Runs a command: bad input is one line naming the flags by `name`, exit 2; a stopped run its own code."""
    tolerant_output()
    try:
        return fn()
    except UsageError as err:
        print(f"{prog}: error: {one_line(err.render(name))}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"{prog}: stopped: {one_line(err.render(name))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `isd ... | head` closed the pipe: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def set_flag(key: str) -> str:
    """How `isd train` and `isd demo` reach a setting that has no flag of its own."""
    return f"--set {key}"
