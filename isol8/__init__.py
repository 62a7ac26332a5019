"""isol8: run untrusted code in rootless sandboxes built on Linux kernel primitives."""

from .async_engine import AsyncIsol8
from .engine import Isol8
from .errors import (InvalidRequest, Isol8Error, ProcessStartFailed, RuntimeNotAvailable,
                     SandboxSetupError, SessionLost, SetupScriptFailed)
from .limits import LimitsUnavailable
from .packages import PackageInstallFailed
from .request import ExecutionRequest
from .result import ExecutionResult, ResourceUsage, StreamEvent

__all__ = [
    "AsyncIsol8",
    "ExecutionRequest",
    "ExecutionResult",
    "InvalidRequest",
    "Isol8",
    "Isol8Error",
    "LimitsUnavailable",
    "PackageInstallFailed",
    "ProcessStartFailed",
    "ResourceUsage",
    "RuntimeNotAvailable",
    "SandboxSetupError",
    "SessionLost",
    "SetupScriptFailed",
    "StreamEvent",
]
__version__ = "0.1.0"
