"""One exception type for user errors: the CLI prints its message as one line."""


class AsftError(Exception):
    """A user-facing error. The message says what went wrong, where, and how to fix it."""
