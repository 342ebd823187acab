"""Errors the core raises for input a user can fix."""


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
