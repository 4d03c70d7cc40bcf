"""The user-facing errors: one type per layer, all :class:`EdgesparseError`, which every command-line tool
prints as one ``error:`` line (exit status 2).

A message names what failed and where: the file, the node, the input or the flag the user can change.
The passes' type is here, in the core every layer shares; the frontends and the backends define theirs
beside their code (``edgesparse.frontends.errors``, ``edgesparse.backends.errors``).
"""


class EdgesparseError(Exception):
    """A mistake a user can make (bad file, bad op, bad target...), as opposed to a bug."""


class PassError(EdgesparseError):
    """A pass or the pipeline cannot do what it was asked on this model (a refused option, a missing level)."""
