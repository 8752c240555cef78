"""Errors meant for users: each says what was wrong, where it came from, and what to do."""


class SafelatentError(Exception):
    """Base class for every error the project raises on purpose."""


class ConfigError(SafelatentError):
    """A config file or command-line override is invalid; raised before any work starts."""


class DataFormatError(SafelatentError):
    """A data file cannot be read as the format it claims (or was detected) to be.

    The message always names the file, the line (when there is one) and the problem.
    """

    def __init__(self, path: str, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class NonFiniteLossError(SafelatentError):
    """A training loss came out NaN or infinite; the step is abandoned before any weight changes."""
