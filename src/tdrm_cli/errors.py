"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (flags, files, run folders). Never a bug."""


def one_line(message: str, limit: int = 2000) -> str:
    """A message fit for one error line: line breaks escaped, cut to `limit` characters
    (an echoed value may be a 50 MB string)."""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    return message if len(message) <= limit else message[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """An exception's first message line (its type name when it has no message)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_line(error: BaseException) -> str:
    """`Type: first message line` of an exception, or `Type` alone when it has no message."""
    name = type(error).__name__
    return f"{name}: {first_line(error)}" if str(error).strip() else name


class Diverged(UsageError):
    """Training produced a non-finite loss or weights (almost always from its options)."""


def check_text(value: str, where: str) -> str:
    """`value` unless it holds a lone UTF-16 surrogate (a valid JSON escape such as
    "\\ud800", but not text: it cannot be tokenized or written as UTF-8)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{where} is not valid Unicode (a lone surrogate)") from None
    return value


JSON_ERRORS = (ValueError, RecursionError)
"""What `json.loads` raises on bad input: JSONDecodeError (a ValueError), integers of more
than 4300 digits (ValueError), nesting deeper than the interpreter's recursion limit."""


def json_reason(error: BaseException) -> str:
    """Why JSON did not parse, beyond a syntax error: ' (nested too deep)' and the like."""
    import json

    if isinstance(error, json.JSONDecodeError):
        return ""
    if isinstance(error, RecursionError):
        return " (nested too deep)"
    return f" ({first_line(error)[:100]})"
