"""Errors a user can act on. The CLI prints ``message`` (and ``hint``) and exits with ``exit_code``;
nothing below the CLI prints or exits itself."""

from __future__ import annotations


class ExitCode:
    """Process exit codes, documented in ``gptoss --help`` and the README."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    MODEL_NOT_FOUND = 3
    NETWORK = 4
    TRUNCATED = 5  # `gptoss run`: the answer was cut short by --max-tokens or the context
    INTERRUPTED = 130


class GptossError(Exception):
    exit_code: int = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(GptossError):
    exit_code = ExitCode.USAGE


class ConfigError(GptossError):
    """config.json is missing, malformed, or describes a shape gptoss cannot run."""


class CheckpointError(GptossError):
    """A safetensors shard or tensor is missing, truncated, or has the wrong shape or dtype."""


class ModelNotFoundError(GptossError):
    exit_code = ExitCode.MODEL_NOT_FOUND


class NetworkError(GptossError):
    exit_code = ExitCode.NETWORK


class ContextLengthError(GptossError):
    """The conversation no longer fits in the context the plan allows."""
