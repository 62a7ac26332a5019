"""Where the proxy's connections go: names resolved by the supervisor itself, every address
judged by the SSRF guard, and a connection to exactly the address that was judged.

Resolving and connecting in one step closes DNS rebinding: a name that answers a public
address to the check and a private one to the connection cannot exist here, because nothing
resolves it twice. Both steps are replaceable (:func:`use`) so tests answer names from a
table and refuse to send a packet anywhere but loopback, even if the guard were broken.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .rules import IPAddress, NetworkFilter, parse_literal

Resolver = Callable[[str], Awaitable[list[IPAddress]]]
Connector = Callable[[IPAddress, int], Awaitable[socket.socket]]

RESOLVE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


async def system_resolver(host: str) -> list[IPAddress]:
    """The host's resolver (getaddrinfo in the loop's executor), addresses in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    return seen


async def direct_connector(address: IPAddress, port: int) -> socket.socket:
    """A nonblocking TCP connection from the supervisor's own network namespace."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (str(address), port)), CONNECT_TIMEOUT
        )
    except BaseException:
        sock.close()
        raise
    return sock


_resolver: Resolver = system_resolver
_connector: Connector = direct_connector


def use(
    resolver: Resolver | None = None, connector: Connector | None = None
) -> tuple[Resolver, Connector]:
    """Replace how names are resolved and connections made, for every proxy of this process
    (tests: a table resolver and a loopback-only connector); returns the previous pair."""
    global _resolver, _connector
    previous = (_resolver, _connector)
    if resolver is not None:
        _resolver = resolver
    if connector is not None:
        _connector = connector
    return previous


@dataclass(frozen=True)
class Refused:
    """The guard refused every address of the host: answered with 403."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """No connection could be made (no such name, unreachable, timeout): answered with 502."""

    reason: str


@dataclass(frozen=True)
class Connected:
    sock: socket.socket
    address: IPAddress
    port: int


async def open_upstream(
    host: str, port: int, policy: NetworkFilter
) -> Connected | Refused | Failed:
    """Connect to ``host`` (a normalized name or an IP literal) on ``port``, as the policy
    allows: a pin replaces resolution (and, with a port, the port), a literal is its own
    address, anything else is resolved here; each address is judged before it is dialled,
    and the socket returned is connected to one that passed."""
    pin = policy.pin(host)
    literal = parse_literal(host)
    if pin is not None:
        candidates = [pin.address]
        port = pin.port or port
    elif literal is not None:
        candidates = [literal]
    else:
        try:
            candidates = await asyncio.wait_for(_resolver(host), RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            return Failed(f"cannot resolve {host}: {_why(exc)}")
        if not candidates:
            return Failed(f"cannot resolve {host}: no address")
    refusals = []
    allowed = []
    for address in candidates:
        refusal = policy.refusal(address)
        if refusal is None:
            allowed.append(address)
        else:
            refusals.append(f"{address} ({refusal})")
    if not allowed:
        return Refused(
            f"{host} is at {', '.join(refusals)}; "
            "set network_filter allow_private to reach private addresses"
        )
    errors = []
    for address in allowed:
        try:
            return Connected(await _connector(address, port), address, port)
        except (OSError, asyncio.TimeoutError) as exc:
            errors.append(f"{address}: {_why(exc)}")
    return Failed(f"cannot connect to {host} port {port}: {'; '.join(errors)}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
