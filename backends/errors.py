"""The backends' user-facing error: a target, build, artefact, device or tuning run that cannot be used."""

from edgesparse.passes.errors import EdgesparseError


class BackendError(EdgesparseError):
    """A target, device tag, artefact, tracker or tuning database the backends cannot use, named in the message."""
