"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (flags, files, run folders). Never a bug."""
