"""What a remote call raises when the local engine has no exception of its own for it.

The server names the engine's exception class in its error answers (``type``), and the
client raises that very class (isol8.errors), so code written against ``Isol8`` catches the
same exceptions from ``RemoteIsol8``. The classes here cover what only a remote call can
meet: the network, authentication, the server's capacity and sessions. Each carries the
HTTP ``status`` (0 when no answer came) and the server's message.
"""

from __future__ import annotations

from ..errors import Isol8Error


class RemoteError(Isol8Error):
    """The server answered with an error no more specific class covers (a 5xx, say)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(RemoteError):
    """401 (no key was sent) or 403 (the key is wrong, or the route is master-only)."""


class NotFound(RemoteError):
    """404: what the call names does not exist (the classes below say what)."""


class SessionNotFound(NotFound):
    """404: the session does not exist, or belongs to another key (the server does not
    tell the two apart, so a key cannot probe for others' session ids), or its sandbox
    has not started yet."""


class RemoteFileNotFound(NotFound, FileNotFoundError):
    """404 from ``get_file``: the session has no such file."""


class OptionsConflict(RemoteError):
    """409: the session was created with other engine options; ``fields`` names them."""

    def __init__(self, message: str, status: int = 409,
                 fields: list[str] | None = None) -> None:
        super().__init__(message, status)
        self.fields = fields or []


class RequestTooLarge(RemoteError):
    """413: the body or the code is over the server's limit."""


class CapacityExceeded(RemoteError):
    """429: the server is at capacity. ``retry_after`` is its ``Retry-After`` in seconds
    (None without one). The client already retried as long as the caller allowed."""

    def __init__(self, message: str, status: int = 429,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ShuttingDown(RemoteError):
    """503: the server is stopping and takes no new work."""


class RemoteTimeout(RemoteError, TimeoutError):
    """No answer within the client's ``http_timeout``: the run may still be going on."""


class RemoteConnectionError(RemoteError, ConnectionError):
    """The server could not be reached, or the connection broke mid-answer."""


__all__ = ["AuthenticationError", "CapacityExceeded", "NotFound", "OptionsConflict",
           "RemoteConnectionError", "RemoteError", "RemoteFileNotFound", "RemoteTimeout",
           "RequestTooLarge", "SessionNotFound", "ShuttingDown"]
