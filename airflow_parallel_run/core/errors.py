"""Errors the engine raises; each names the field, file or mini-batch at fault."""

from __future__ import annotations


class ParallelRunError(Exception):
    """Base class for engine errors."""


class ConfigError(ParallelRunError, ValueError):
    """A configuration value is not allowed. `field` names the offending setting."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class OutputBusyError(ConfigError):
    """Another running job holds the output folder's lock: a clash of the moment, worth retrying later.

    A `ConfigError` (the CLI exits with 2 and nothing starts); the Airflow operator turns it into a
    retriable task failure instead of a final one.
    """


class InputError(ParallelRunError, ValueError):
    """An input cannot be listed, read or split."""


class DataChangedError(InputError):
    """An input's data no longer is what the job planned (a file rewritten, rows of a table updated).

    Raised while reading a mini-batch, it fails the attempt without a retry: every other try would read
    the same changed data, and running on it would give output that was never keyed.
    """
