"""What ``network="filtered"`` adds to an engine, in one place: the listeners the helper
makes, the resolver file and proxy variables the sandbox sees, and the hook that serves
each sandbox's listeners. The engine only asks; the pieces live beside this module.
"""

from __future__ import annotations

import socket

from ..protocol import Listen, Listener
from . import nft, service
from .proxy import CAPTURE_ALL_PORT, PROXY_PORT
from .rules import NetworkFilter

#: glibc asks 127.0.0.1 (the fake-IP DNS, answered by the supervisor); one retry, fast,
#: since a lost datagram on loopback means a busy supervisor, not a lossy network.
RESOLV_CONF = b"nameserver 127.0.0.1\noptions timeout:2 attempts:2\n"
_PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"


class FilteredNetwork:
    """The engine's side of filtered mode: built from the validated ``network_filter``."""

    def __init__(self, policy: NetworkFilter) -> None:
        self.policy = policy
        listens = [
            Listen("tcp", 80),  # captured plain HTTP, on every address (local routes)
            Listen("tcp", 443),  # captured TLS
            Listen("tcp", PROXY_PORT, loopback=True),  # the explicit proxy
            Listen("udp", 53),  # the fake-IP DNS, whatever resolver the code asks
            Listen("tcp", 53),
        ]
        if policy.capture == "all":
            # on every address: nftables redirects IPv6 to ::1, IPv4 to 127.0.0.1
            listens.append(Listen("tcp", CAPTURE_ALL_PORT))
        self.listens = tuple(listens)
        # UDP but DNS rejected, and with "all" every TCP port redirected to the proxy: the
        # helper replays this batch in the sandbox's namespace (nft.py says why it is static)
        self.nft = nft.batch(policy.capture)

    @staticmethod
    def env() -> dict[str, str]:
        """Proxy variables for every run: both spellings, since tools read one or the other
        (curl only the lowercase ``http_proxy``), and loopback kept off the proxy."""
        names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
        env = {name: _PROXY_URL for name in names}
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
        return env

    def start(self) -> None:
        service.acquire()

    def stop(self) -> None:
        service.release()

    def serve(self, listeners: list[tuple[Listener, socket.socket]]) -> service.ProxyHandle:
        """The hook a sandbox calls when its listeners arrive."""
        return service.ProxyHandle(self.policy, listeners)

    def phased(self) -> "PhasedNetwork":
        """A hook for one sandbox whose policy changes between the phases of a run."""
        return PhasedNetwork(self.policy)


class PhasedNetwork:
    """One sandbox's proxy under a policy that can change between phases: a package
    install reaches its index only, then the run's own rules apply again. The sandbox's
    listeners may arrive after a phase has begun (their event is read with the first
    run's), so the policy in force is kept here and the proxy starts under it."""

    def __init__(self, policy: NetworkFilter) -> None:
        self.base = policy
        self.policy = policy
        self.handle: service.ProxyHandle | None = None

    def serve(self, listeners: list[tuple[Listener, socket.socket]]) -> service.ProxyHandle:
        self.handle = service.ProxyHandle(self.policy, listeners)
        return self.handle

    def use(self, policy: NetworkFilter | None = None) -> None:
        """Judge by ``policy`` from now on (None: the sandbox's own again)."""
        self.policy = policy or self.base
        if self.handle is not None:
            self.handle.use_policy(self.policy)
