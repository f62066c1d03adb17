"""The one exception type users see: a message naming the file or flag and the fix, no traceback."""


class UsageError(Exception):
    """Bad input found before (or instead of) compute; the CLI prints it as one line and exits 2."""
