"""The frontends' user-facing error: a model, data set or training input that cannot be used."""

from edgesparse.passes.errors import EdgesparseError


class FrontendError(EdgesparseError):
    """A model file, module, photo or data set the frontends cannot read or use, named in the message."""
