"""Errors meant for the operator: one line that names the file or field and what to do."""


class VentError(Exception):
    """Base of every error the CLI reports without a traceback."""

    exit_code = 1


class ConfigError(VentError):
    """The cluster file is unreadable or invalid."""

    exit_code = 2

    def __init__(self, source: str, path: str, problem: str):
        self.source, self.path, self.problem = source, path, problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class StateError(VentError):
    """The state directory is missing, unreadable or inconsistent."""
