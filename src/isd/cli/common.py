"""What every entry point shares: one-line argument errors and no traceback for bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from isd.errors import RunStopped, UsageError

TRUST_FLAG = "--trust-checkpoint-code"  # the opt-out of the safe checkpoint reader, on every command that reads one


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
    """TRUST_FLAG, named so that nobody sets it by accident."""
    parser.add_argument(TRUST_FLAG, action="store_true", help=f"unpickle {what} without the safe reader's limits, "
                        f"which lets a crafted file run code: only for a file you made or whose source you trust")


def tolerant_output() -> None:
    """stdout as stderr already is: a path typed in a non-UTF-8 encoding (undecodable bytes arrive as surrogates)
    is printed with backslash escapes instead of raising UnicodeEncodeError after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def run_guarded(fn: Callable[[], int], prog: str) -> int:
    tolerant_output()
    try:
        return fn()
    except UsageError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"{prog}: stopped: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

