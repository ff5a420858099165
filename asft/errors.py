"""One exception type for user errors: the CLI prints its message as one line."""


class AsftError(Exception):
    """A user-facing error. The message says what went wrong, where, and how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message: enough for a one-line AsftError."""
    return (str(exc).strip().splitlines() or [""])[0]
