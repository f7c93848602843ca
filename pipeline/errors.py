"""Errors a user can act on: the stage prints the message alone and exits non-zero."""


class PipelineError(Exception):
    """Base class: a problem with the user's config or data, not a bug."""


class ConfigError(PipelineError):
    """A config value is missing, of the wrong type, or out of range."""


class DataError(PipelineError):
    """The input data cannot be used (missing path, empty class folder, unsafe archive, ...)."""
