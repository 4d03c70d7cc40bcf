"""The one exception type for mistakes a user can make (bad file, bad op, bad target...)."""


class EdgesparseError(Exception):
    """A user-facing error: its message is printed as one ``error:`` line by the command-line tools."""
