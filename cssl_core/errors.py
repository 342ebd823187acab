"""Errors the core raises for input a user can fix, and the hint their messages give for a misspelt name."""

import difflib
from collections.abc import Iterable


class CsslError(Exception):
    """Base class: the message says what to fix."""


class ConfigError(CsslError, ValueError):
    """A configuration value or name is invalid."""


class DataError(CsslError):
    """A dataset could not be found, read or decoded."""


class TrainingError(CsslError):
    """Training stopped, e.g. on a non-finite loss."""


class CheckpointError(CsslError):
    """A checkpoint file is missing, corrupt or of another format."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean temperature?)`` for a misspelt name, or nothing when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
