"""Errors that end a command with a documented exit code.

Every user-facing failure is one of these, so the CLI can print a single line (what and
where) instead of a traceback. Exit codes are part of the public contract (README):
0 ok, 2 bad input or config, 3 finished with more failed shards than allowed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_FAILED_SHARDS = 3


class CurateError(Exception):
    """Base class: a problem the user must fix; the message is the one line they see."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(CurateError):
    """The pipeline config (YAML, --set overrides) is invalid."""


class InputError(CurateError):
    """The pool, an image shard, a metadata file or a model checkpoint is unusable."""


class RunDirError(CurateError):
    """The run directory is locked, unwritable or belongs to another pipeline."""


class FailedShardsError(CurateError):
    """The run finished, but more shards failed than `run.max_failed_fraction` allows."""

    exit_code = EXIT_FAILED_SHARDS
