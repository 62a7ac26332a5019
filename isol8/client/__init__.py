"""``RemoteIsol8`` and ``AsyncRemoteIsol8``: the engine's API, executed by an ``isol8 serve``.

Needs the ``client`` extra (httpx2); the core library never imports this package. The
results, events and exceptions are the local engine's (isol8.result, isol8.errors), plus
isol8.client.errors for what only a remote call meets.
"""

from .async_remote import AsyncRemoteIsol8
from .errors import (AuthenticationError, CapacityExceeded, NotFound, OptionsConflict,
                     RemoteConnectionError, RemoteError, RemoteFileNotFound, RemoteTimeout,
                     RequestTooLarge, SessionNotFound, ShuttingDown)
from .remote import RemoteIsol8
from .wire import RemoteExecutionResult, SessionInfo

__all__ = ["AsyncRemoteIsol8", "AuthenticationError", "CapacityExceeded", "NotFound",
           "OptionsConflict", "RemoteConnectionError", "RemoteError", "RemoteExecutionResult",
           "RemoteFileNotFound", "RemoteIsol8", "RemoteTimeout", "RequestTooLarge",
           "SessionInfo", "SessionNotFound", "ShuttingDown"]
