"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (flags, files, run folders). Never a bug."""


def first_line(error: BaseException) -> str:
    """An exception's first message line (its type name when it has no message)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Diverged(UsageError):
    """Training produced a non-finite loss or weights (almost always from its options)."""
