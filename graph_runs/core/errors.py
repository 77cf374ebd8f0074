"""Errors the domain raises; the CLI turns each into one line and exit status 2."""


class GraphRunsError(Exception):
    """Base class for errors a user can act on."""


class InvalidInput(GraphRunsError):
    """A value failed validation; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(GraphRunsError):
    """The named grant or schedule does not exist."""


class Conflict(GraphRunsError):
    """The request contradicts what is stored."""
