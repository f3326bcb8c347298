"""The project's error types.

Every error a user can cause or meet carries its own exit status; the CLI maps them to one line
on stderr in one place (``gpumgr.cli``), nothing else prints them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2


class GpumgrError(Exception):
    """Base of every error gpumgr raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_RUNTIME


class InputError(GpumgrError):
    """Bad input from the user (arguments, names, files): exit status 2."""

    exit_code = EXIT_INPUT


class ConfigIssue:
    """One problem found in a configuration file, located by file, line, column and key path."""

    __slots__ = ("file", "line", "column", "path", "message")

    def __init__(
        self, file: str, line: int | None, column: int | None, path: str, message: str
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigIssue({self!s})"


class ConfigError(InputError):
    """One or more configuration problems; ``issues`` holds every one found in the run."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class GpuUnavailable(GpumgrError):
    """NVML (or the simulated GPU) cannot be read: no driver, no library, no permission."""


class PlanInfeasible(GpumgrError):
    """The requested providers do not fit; the message names the provider and the shortfall."""


class WeightsError(GpumgrError):
    """A download or verification of model weights failed (network: exit 1)."""


class WeightsInputError(WeightsError, InputError):
    """The weights request itself is wrong (missing repo/revision, gated, not AWQ, no disk): exit 2."""

    exit_code = EXIT_INPUT


class BackendUnavailable(GpumgrError):
    """A backend could not be started or reached."""


class DaemonUnavailable(GpumgrError):
    """The CLI could not reach a running daemon."""
