"""Errors a user can act on: the stage prints the message alone and exits non-zero."""

from pathlib import Path


class PipelineError(Exception):
    """Base class: a problem with the user's config or data, not a bug."""


class ConfigError(PipelineError):
    """A config value is missing, of the wrong type, or out of range."""


class DataError(PipelineError):
    """The input data cannot be used (missing path, empty class folder, unsafe archive, ...)."""


class ImageDecodeError(DataError):
    """A file that is not a decodable image; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ServiceError(PipelineError):
    """A service the pipeline talks to (tracking server, object store, database) cannot be reached or
    started; the message names its address."""


def describe(err: BaseException) -> str:
    """An exception as one line; its type where its message is empty (a MemoryError, a bare EOFError)."""
    return " ".join(str(err).split()) or type(err).__name__


def unexpected(err: BaseException) -> str:
    """What an input gets when reading it raised what no reader anticipated (a bug to report, or memory
    exhausted): the error's type and message, so that it costs that input alone."""
    return f"cannot be read: unexpected {type(err).__name__} ({describe(err)})"
