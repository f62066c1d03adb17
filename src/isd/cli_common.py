"""What every entry point shares: one-line argument errors and no traceback for bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from isd.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line naming the flag and where to look, not the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def run_guarded(fn: Callable[[], int], prog: str) -> int:
    try:
        return fn()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
