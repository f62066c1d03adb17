"""The exceptions users see: a message naming the file or flag and the fix, no traceback."""


class UsageError(Exception):
    """Bad input found before (or instead of) compute; the CLI prints it as one line and exits 2."""


class RunStopped(Exception):
    """Training stopped on purpose after putting its state in a safe place; the CLI exits with `exit_code`."""

    exit_code = 1


class Preempted(RunStopped):
    """SIGTERM / SIGINT / SIGUSR1: a checkpoint was written; `--resume auto` continues from it."""

    exit_code = 75  # EX_TEMPFAIL: try again later (resubmit / requeue)


class NonFiniteError(RunStopped):
    """A non-finite loss, gradient or teacher weight; the last good checkpoint is untouched."""

    exit_code = 3


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is intact."""

    exit_code = 4
