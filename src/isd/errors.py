"""The exceptions users see: a message naming the file or setting and the fix, no traceback.

A message that names settings is a template: `{batch_size}` names a setting by its config key, every other field
is a value passed by keyword (`SettingError("{batch_size} {got} is larger than the dataset", got=16)`). `str()`
shows the key itself, as Python callers and recipe or plan files spell it; each command line renders the flag its
user typed instead (`--batch-size`, `--batch_size`, `--set batch_size`): the engine knows no flags.
"""

from __future__ import annotations

import string
from collections.abc import Callable


class NamesSettings(Exception):
    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        super().__init__(self.render())

    def keys(self) -> list[str]:
        fields = (name for _, name, _, _ in string.Formatter().parse(self.template) if name)
        return [name for name in dict.fromkeys(fields) if name not in self.values]

    def render(self, name: Callable[[str], str] = str) -> str:
        return self.template.format(**{key: name(key) for key in self.keys()}, **self.values)


class UsageError(Exception):
    """Bad input found before (or instead of) compute; the CLI prints it as one line and exits 2."""

    def render(self, name: Callable[[str], str] = str) -> str:
        return str(self)


class ArgumentError(UsageError, ValueError):
    """A bad value passed to the Python API: one line naming the argument and the fix (a ValueError)."""


class ArgumentTypeError(UsageError, TypeError):
    """An argument of the wrong type passed to the Python API (a TypeError)."""


class SettingError(NamesSettings, UsageError):
    """A bad value of one or more settings, named by their config keys (see the module's docstring)."""


class RunStopped(NamesSettings):
    """Training stopped on purpose after putting its state in a safe place; the CLI exits with `exit_code`."""

    exit_code = 1


class Preempted(RunStopped):
    """SIGTERM / SIGINT / SIGUSR1: a checkpoint was written; `resume: auto` continues from it."""

    exit_code = 75  # EX_TEMPFAIL: try again later (resubmit / requeue)


class NonFiniteError(RunStopped):
    """A non-finite loss, gradient or teacher weight; the last good checkpoint is untouched."""

    exit_code = 3


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is intact."""

    exit_code = 4
