"""One sandbox's egress proxy: the asyncio side of ``network="filtered"``.

The helper made the listening sockets inside the sandbox's network namespace, where every
address is local (``local`` default routes on ``lo``); the supervisor serves them here and
makes every outbound connection from its own namespace. What arrives where:

- ``127.0.0.1:8118``: an explicit HTTP proxy (``HTTP_PROXY``): absolute-URI requests,
  kept alive, and CONNECT tunnels whose TLS ClientHello must name the requested host;
- any address, TCP 80: plain HTTP from a client that ignored the proxy variables; the
  upstream is the Host header, and it must agree with the name the sandbox resolved;
- any address, TCP 443: TLS, passed through untouched, routed by the ClientHello's SNI;
- any address, UDP and TCP 53: the fake-IP DNS (``dns.FakeDNS``), so a dialled address
  names the host it was resolved from;
- port 8119 (``capture="all"``): every other TCP port, redirected there by nftables; the
  original destination is ``SO_ORIGINAL_DST``, the host the fake address's name.

Every decision is logged (``NetworkLog``); refusals say which rule refused. Nothing here
trusts the sandbox to be polite: heads are bounded and timed, upstream connections are
bounded per sandbox (more wait their turn), and relays hold at most a pipe per direction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import framing, outbound, sniff
from .dns import FakeDNS, FakeIPPool, StreamDecoder, frame
from .relay import ByteCount, forward_exactly, relay
from .rules import IPAddress, NetworkFilter, normalize_host, parse_literal
from ..errors import InvalidRequest
from ..result import NetworkLog

PROXY_PORT = 8118
CAPTURE_ALL_PORT = 8119
#: Client connections served at once per sandbox; beyond it the listeners wait (the kernel's
#: backlog holds the rest), so a flood costs the supervisor bounded memory.
MAX_CLIENTS = 1024
HEAD_TIMEOUT = 30.0  # a request head must arrive whole in this time (slowloris)
KEEPALIVE_IDLE = 60.0  # between two requests on one connection
RESPONSE_TIMEOUT = 120.0  # from the request to the upstream's response head
IDLE_TIMEOUT = 300.0  # a tunnel or body with no byte either way
HELLO_TIMEOUT = 10.0  # a ClientHello must arrive whole in this time
CONTINUE_WAIT = 1.0  # for the upstream's 100 Continue before the body goes anyway
DNS_TCP_IDLE = 10.0
ACCEPT_RETRY = 0.05  # after an accept() the supervisor could not serve (out of fds)
MAX_LOGS = 10_000  # per run; the rest are counted in ``logs_dropped``
_CHUNK = 65536  # a head's reads
_BODY_CHUNK = 1 << 18  # a body's: fewer loop turns per byte (each costs Python)
_SPLICE_MIN = 1 << 16  # a Content-Length body this long is spliced, not read
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST is 80 too


@dataclass
class NetworkUsage:
    """What one run did through the proxy."""

    logs: list[NetworkLog] = field(default_factory=list)
    bytes_in: int = 0  # upstream to the sandbox
    bytes_out: int = 0  # the sandbox to upstream
    logs_dropped: int = 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Closed(Exception):
    """The client went away or broke the protocol: the connection just ends."""


class SandboxProxy:
    """The proxy of one sandbox; made anywhere, then used on the network loop's thread
    (but :meth:`snapshot`)."""

    def __init__(self, policy: NetworkFilter) -> None:
        self.policy = policy
        self.pool = FakeIPPool()
        # self.policy, read when asked: a package install switches it for its phase
        self.dns = FakeDNS(self.pool, lambda name: self.policy.decide(name).allowed)
        self.count = ByteCount()
        self.usage = NetworkUsage()
        self._slots = asyncio.Semaphore(policy.max_connections)
        self._clients = asyncio.Semaphore(MAX_CLIENTS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._readers: list[socket.socket] = []
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, listeners: list[tuple[str, int, socket.socket]]) -> None:
        """Serve ``(proto, port, socket)`` listeners; the sockets stay their owner's."""
        loop = asyncio.get_running_loop()
        for proto, port, sock in listeners:
            if proto == "udp":
                loop.add_reader(sock.fileno(), self._dns_datagrams, sock)
                self._readers.append(sock)
                continue
            handler = self._handler_for(port)
            self._spawn(self._accept(sock, handler))

    def _handler_for(self, port: int) -> Callable[[socket.socket], Coroutine[Any, Any, None]]:
        if port == PROXY_PORT:
            return self._explicit
        if port == 80:
            return self._captured_http
        if port == 443:
            return self._captured_tls
        if port == 53:
            return self._dns_stream
        return self._captured_any

    async def close(self) -> None:
        """Stop serving: every task cancelled and awaited (their logs are in), every
        client and upstream socket closed. The listeners are their owner's to close."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for sock in self._readers:
            loop.remove_reader(sock.fileno())
        self._readers.clear()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self) -> NetworkUsage:
        """The usage as it stands, from any thread, resetting nothing (a closed proxy's)."""
        usage = NetworkUsage(
            list(self.usage.logs), self.count.down, self.count.up, self.usage.logs_dropped
        )
        return usage

    def take(self) -> NetworkUsage:
        """This run's usage; the next run starts from zero. On the loop's thread."""
        usage, self.usage = self.usage, NetworkUsage()
        usage.bytes_in, usage.bytes_out = self.count.down, self.count.up
        self.count.down = self.count.up = 0
        return usage

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(
        self,
        listener: socket.socket,
        handler: Callable[[socket.socket], Coroutine[Any, Any, None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._clients.acquire()
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError:
                # EMFILE/ENFILE, ENOBUFS: the supervisor is out of something for a moment;
                # the connection waits in the backlog and this listener keeps being served.
                self._clients.release()
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            except BaseException:
                self._clients.release()
                raise
            self._spawn(self._serve(conn, handler))

    async def _serve(
        self, conn: socket.socket, handler: Callable[[socket.socket], Coroutine[Any, Any, None]]
    ) -> None:
        try:
            conn.setblocking(False)
            # Heads and bodies go out as separate writes: without this, Nagle holds the
            # second for the client's delayed ACK, 40 ms per keep-alive request.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await handler(conn)
        except (_Closed, OSError, asyncio.TimeoutError, framing.FramingError):
            pass  # the connection ends; nothing else does
        finally:
            conn.close()
            self._clients.release()

    # --- logging --------------------------------------------------------------------------

    def _log(
        self, method: str, host: str, path: str | None, allowed: bool, started: float, reason: str
    ) -> None:
        if len(self.usage.logs) >= MAX_LOGS:
            self.usage.logs_dropped += 1
            return
        self.usage.logs.append(
            NetworkLog(
                _now(),
                method,
                host,
                path,
                "ALLOW" if allowed else "BLOCK",
                int((time.monotonic() - started) * 1000),
                reason,
            )
        )

    # --- DNS ------------------------------------------------------------------------------

    def _dns_datagrams(self, sock: socket.socket) -> None:
        for _ in range(64):  # a burst, then the loop's other work
            try:
                data, peer = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            answer = self.dns.answer(data)
            if answer is not None:
                try:
                    sock.sendto(answer, peer)
                except OSError:
                    pass  # a full buffer drops the answer, as a network would

    async def _dns_stream(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        decoder = StreamDecoder()
        while True:
            data = await _recv(loop, conn, 4096, DNS_TCP_IDLE)
            if not data:
                return
            try:
                messages = decoder.feed(data)
            except ValueError:
                return
            for message in messages:
                answer = self.dns.answer(message, tcp=True)
                if answer is not None:
                    await loop.sock_sendall(conn, frame(answer))

    # --- where a captured connection was going ----------------------------------------------

    def _dialled_name(self, address: str) -> str | None:
        """The name the sandbox's DNS gave this address, if it is one of the fake ones."""
        return self.pool.name_for(address.split("%", 1)[0])

    # --- the explicit proxy and captured HTTP ----------------------------------------------

    async def _explicit(self, conn: socket.socket) -> None:
        await self._http(conn, captured=None)

    async def _captured_http(self, conn: socket.socket) -> None:
        address, port = conn.getsockname()[:2]
        await self._http(conn, captured=(str(address), int(port)))

    async def _http(self, conn: socket.socket, captured: tuple[str, int] | None) -> None:
        """Requests one after another on one client connection, each checked and logged."""
        pending = bytearray()
        upstream: _Upstream | None = None
        try:
            while True:
                head = await self._read_head(conn, pending, first=upstream is None)
                if head is None:
                    return
                started = time.monotonic()
                method = head.method.decode("latin-1")
                if captured is None and head.method == b"CONNECT":
                    if upstream is not None:
                        upstream.close()
                        upstream = None
                    await self._connect_method(conn, head, pending, started)
                    return
                target = sniff.upstream_of(head, default_port=captured[1] if captured else 80)
                if isinstance(target, sniff.HttpError):
                    await self._refuse(conn, target.status, target.reason)
                    return
                if captured is not None:
                    mismatch = self._captured_mismatch(captured, target.host, target.port)
                    if mismatch:
                        self._log(method, target.host, target.path, False, started, mismatch)
                        await self._refuse(conn, 403, mismatch)
                        return
                decision = self.policy.decide(target.host)
                if not decision.allowed:
                    self._log(method, target.host, target.path, False, started, decision.rule)
                    reason = f"{target.host} is blocked by the network filter: {decision.rule}"
                    await self._refuse(conn, 403, reason)
                    return  # as the answer says (Connection: close); a body is never read
                key = (target.host, target.port)
                if upstream is None or upstream.key != key:
                    if upstream is not None:
                        upstream.close()
                        upstream = None
                    opened = await self._open(target.host, target.port)
                    if not isinstance(opened, _Upstream):
                        status = 403 if isinstance(opened, outbound.Refused) else 502
                        self._log(method, target.host, target.path, False, started, opened.reason)
                        await self._refuse(conn, status, opened.reason)
                        return
                    upstream = opened
                    upstream.key = key
                keep = await self._exchange(
                    conn, head, target, pending, upstream, started, decision.rule
                )
                if not keep:
                    return
        finally:
            if upstream is not None:
                upstream.close()

    def _captured_mismatch(self, captured: tuple[str, int], host: str, port: int) -> str:
        """A captured request must name the host its connection was dialled for: the policy
        checks the name, and the name must be where the bytes were going."""
        if port != captured[1]:
            return f"Host names port {port} but the connection was made to port {captured[1]}"
        dialled = self._dialled_name(captured[0])
        if dialled is not None and dialled != host:
            return (
                f"the request names {host} but the connection was made to the address "
                f"the sandbox resolved for {dialled}"
            )
        return ""

    async def _read_head(
        self, conn: socket.socket, pending: bytearray, first: bool
    ) -> sniff.RequestHead | None:
        """The next request head (its bytes consumed from ``pending``), or None at a clean
        end between requests. A malformed or overlong head is answered and ends the
        connection."""
        loop = asyncio.get_running_loop()
        reader = sniff.RequestHeadReader()
        result = reader.feed(bytes(pending)) if pending else sniff.NEED_MORE
        fed = len(pending)
        deadline = time.monotonic() + (HEAD_TIMEOUT if first else KEEPALIVE_IDLE)
        while isinstance(result, sniff.NeedMore):
            try:
                data = await _recv(loop, conn, _CHUNK, max(deadline - time.monotonic(), 0))
            except TimeoutError:
                if fed:  # a head begun and never finished: slowloris, or a stuck client
                    await self._refuse(conn, 408, "the request head did not arrive in time")
                raise _Closed from None
            if not data:
                if fed:
                    raise _Closed
                return None
            if not fed:  # the head has begun: it now has HEAD_TIMEOUT to finish
                deadline = time.monotonic() + HEAD_TIMEOUT
            pending += data
            fed += len(data)
            result = reader.feed(data)
        if isinstance(result, sniff.HttpError):
            await self._refuse(conn, result.status, result.reason)
            raise _Closed
        del pending[: result.length]
        return result

    async def _refuse(self, conn: socket.socket, status: int, reason: str) -> None:
        body = f"isol8: {reason}\n".encode("utf-8", "replace")
        phrase = _REASONS.get(status, "Error")
        head = (
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-Isol8-Reason: "
            f"{_UNPRINTABLE.sub('?', reason)[:200]}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_sendall(conn, head + body), HELLO_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            pass

    async def _open(self, host: str, port: int) -> _Upstream | outbound.Refused | outbound.Failed:
        await self._slots.acquire()
        try:
            opened = await outbound.open_upstream(host, port, self.policy)
        except BaseException:
            self._slots.release()
            raise
        if not isinstance(opened, outbound.Connected):
            self._slots.release()
            return opened
        return _Upstream(opened.sock, self._slots)

    async def _exchange(
        self,
        conn: socket.socket,
        head: sniff.RequestHead,
        target: sniff.Upstream,
        pending: bytearray,
        upstream: _Upstream,
        started: float,
        rule: str,
    ) -> bool:
        """One request and its response; True if both connections may carry the next."""
        method = head.method.decode("latin-1")
        origin = sniff.to_origin_form(head, target)  # sent with the body's first bytes
        body = framing.BodyScanner(framing.request_framing(head))
        response: framing.ResponseHead | str | None = None
        body_sent = body.done
        if not body.done and _expects_continue(head):
            await self._send(upstream.sock, origin, up=True)
            origin = b""
            # RFC 9110 §10.1.1: the client holds its body until a 100 (curl for a second):
            # pass the upstream's answer on as soon as it comes, or go on without it.
            response = await self._response_head(upstream, CONTINUE_WAIT, soft=True)
            if isinstance(response, framing.ResponseHead) and _interim(response):
                await self._send(conn, _response_head(response, close=False), up=False)
                response = None
        if response is None:
            body_sent = await self._forward_body(
                conn, upstream.sock, body, pending, up=True, head=origin
            )
            response = await self._response_head(upstream, RESPONSE_TIMEOUT)
            while isinstance(response, framing.ResponseHead) and _interim(response):
                await self._send(conn, _response_head(response, close=False), up=False)
                response = await self._response_head(upstream, RESPONSE_TIMEOUT)
        if not isinstance(response, framing.ResponseHead):
            reason = response or "the upstream did not answer in time"
            self._log(method, target.host, target.path, False, started, reason)
            await self._refuse(conn, 502 if response else 504, reason)
            return False
        self._log(method, target.host, target.path, True, started, rule)
        kind = framing.response_framing(response, head.method)
        if isinstance(kind, sniff.HttpError) or response.status == 101:
            reason = kind.reason if isinstance(kind, sniff.HttpError) else "protocol switch"
            await self._refuse(conn, 502, f"unusable upstream response: {reason}")
            return False
        keep = (
            kind.kind != "close"
            and body_sent  # answered before the body came: what follows may be the body
            and head.version != b"HTTP/1.0"  # RFC 9112 §9.3: never with a 1.0 client
            and framing.keep_alive(head.version, head.headers)
            and framing.keep_alive(response.version, response.headers)
        )
        sent = await self._forward_body(
            upstream.sock,
            conn,
            framing.BodyScanner(kind),
            upstream.pending,
            up=False,
            head=_response_head(response, close=not keep),
            until_close=kind.kind == "close",
        )
        return keep and sent

    async def _response_head(
        self, upstream: _Upstream, timeout: float, soft: bool = False
    ) -> framing.ResponseHead | str | None:
        """The upstream's next response head (interim 1xx ones included), why there is none,
        or None when ``timeout`` passed: an error, unless ``soft`` (nothing came yet)."""
        loop = asyncio.get_running_loop()
        reader = framing.ResponseHeadReader()
        result = reader.feed(bytes(upstream.pending)) if upstream.pending else sniff.NEED_MORE
        deadline = time.monotonic() + timeout
        while isinstance(result, sniff.NeedMore):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                data = await _recv(loop, upstream.sock, _CHUNK, remaining)
            except asyncio.TimeoutError:
                continue
            if not data:
                return "the upstream closed without answering"
            upstream.pending += data
            result = reader.feed(data)
        if isinstance(result, sniff.HttpError):
            return result.reason
        del upstream.pending[: result.length]
        return result

    async def _forward_body(
        self,
        src: socket.socket,
        dst: socket.socket,
        scanner: framing.BodyScanner,
        pending: bytearray,
        up: bool,
        head: bytes = b"",
        until_close: bool = False,
    ) -> bool:
        """Send ``head`` with the body's first bytes in one write, then the rest of the
        body as it arrives; True once the whole body went. What remains of a Content-Length
        body is spliced (``relay.forward_exactly``); others pass through Python, no more of
        them in memory than one read (``_BODY_CHUNK``). ``until_close``: the body ends
        when ``src`` does (a close-delimited response)."""
        loop = asyncio.get_running_loop()
        first = head
        if pending and not scanner.done:
            n = scanner.feed(pending)
            first += bytes(pending[:n])
            del pending[:n]
        await self._send(dst, first, up=up)
        if scanner.remaining and scanner.remaining >= _SPLICE_MIN:
            count = self._counter(up)
            try:
                await forward_exactly(
                    src, dst, scanner.remaining, count, idle_timeout=IDLE_TIMEOUT
                )
            except EOFError:
                raise _Closed from None
            return True
        while not scanner.done:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await loop.sock_recv(src, _BODY_CHUNK)
            if not data:
                if until_close:
                    return True
                raise _Closed
            n = scanner.feed(data)
            await self._send(dst, data[:n] if n < len(data) else data, up=up)
            if n < len(data):
                pending += data[n:]
        return True

    def _counter(self, up: bool) -> Callable[[int], None]:
        def count(n: int) -> None:
            if up:
                self.count.up += n
            else:
                self.count.down += n

        return count

    async def _send(self, sock: socket.socket, data: bytes, up: bool | None) -> None:
        """Send all of ``data``, counted as the run's traffic out (``up``) or in; None: the
        proxy's own words, not counted."""
        if not data:
            return
        async with asyncio.timeout(IDLE_TIMEOUT):
            await asyncio.get_running_loop().sock_sendall(sock, data)
        if up:
            self.count.up += len(data)
        elif up is not None:
            self.count.down += len(data)

    # --- tunnels: CONNECT, captured TLS, any captured port ----------------------------------

    async def _connect_method(
        self, conn: socket.socket, head: sniff.RequestHead, pending: bytearray, started: float
    ) -> None:
        target = sniff.upstream_of(head)
        if isinstance(target, sniff.HttpError):
            await self._refuse(conn, target.status, target.reason)
            return
        decision = self.policy.decide(target.host)
        if not decision.allowed:
            self._log("CONNECT", target.host, None, False, started, decision.rule)
            reason = f"{target.host} is blocked by the network filter: {decision.rule}"
            await self._refuse(conn, 403, reason)
            return
        opened = await self._open(target.host, target.port)
        if not isinstance(opened, _Upstream):
            status = 403 if isinstance(opened, outbound.Refused) else 502
            self._log("CONNECT", target.host, None, False, started, opened.reason)
            await self._refuse(conn, status, opened.reason)
            return
        try:
            await self._send(conn, b"HTTP/1.1 200 Connection established\r\n\r\n", up=None)
            hello, first = await self._read_hello(conn, pending)
            refusal = _sni_refusal(hello, target.host, self.policy)
            if refusal:
                self._log("CONNECT", target.host, None, False, started, refusal)
                return
            self._log("CONNECT", target.host, None, True, started, decision.rule)
            await self._send(opened.sock, first, up=True)
            await relay(conn, opened.sock, self.count, idle_timeout=IDLE_TIMEOUT)
        finally:
            opened.close()

    async def _read_hello(
        self, conn: socket.socket, pending: bytearray
    ) -> tuple[sniff.ClientHello | str, bytes]:
        """The client's ClientHello (or why there is none) and every byte read so far."""
        loop = asyncio.get_running_loop()
        reader = sniff.ClientHelloReader()
        seen = bytearray(pending)
        pending.clear()
        result = reader.feed(bytes(seen)) if seen else sniff.NEED_MORE
        deadline = time.monotonic() + HELLO_TIMEOUT
        while isinstance(result, sniff.NeedMore):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "no TLS ClientHello in time", bytes(seen)
            try:
                data = await _recv(loop, conn, _CHUNK, remaining)
            except asyncio.TimeoutError:
                return "no TLS ClientHello in time", bytes(seen)
            if not data:
                return "closed before a TLS ClientHello", bytes(seen)
            seen += data
            result = reader.feed(data)
        if isinstance(result, sniff.NotTLS):
            return "not TLS", bytes(seen)
        if isinstance(result, sniff.Malformed):
            return f"malformed TLS ClientHello: {result.reason}", bytes(seen)
        return result, bytes(seen)

    async def _captured_tls(self, conn: socket.socket) -> None:
        started = time.monotonic()
        address, port = conn.getsockname()[:2]
        dialled = self._dialled_name(str(address))
        hello, first = await self._read_hello(conn, bytearray())
        if isinstance(hello, str):
            self._log("CONNECT", dialled or str(address), None, False, started, hello)
            return
        host = hello.sni or dialled or _literal(str(address))
        if hello.sni and dialled and _norm(hello.sni) != dialled:
            self._log(
                "CONNECT",
                _norm(hello.sni) or hello.sni,
                None,
                False,
                started,
                f"the TLS SNI names {hello.sni} but the connection was made to the "
                f"address the sandbox resolved for {dialled}",
            )
            return
        await self._tunnel(conn, _norm(host) or host, int(port), first, started)

    async def _captured_any(self, conn: socket.socket) -> None:
        started = time.monotonic()
        address, port = _original_destination(conn)
        if ipaddress.ip_address(address).is_loopback:
            # The nat chain leaves loopback alone: this is a direct connection to the capture
            # port itself, not a redirected one, and it has no destination to be relayed to.
            reason = "direct connection to the capture port"
            self._log("CONNECT", address, None, False, started, reason)
            return
        host = self._dialled_name(address) or _literal(address)
        await self._tunnel(conn, host, port, b"", started)

    async def _tunnel(
        self, conn: socket.socket, host: str, port: int, first: bytes, started: float
    ) -> None:
        decision = self.policy.decide(host)
        if not decision.allowed:
            self._log("CONNECT", host, None, False, started, decision.rule)
            return
        opened = await self._open(host, port)
        if not isinstance(opened, _Upstream):
            self._log("CONNECT", host, None, False, started, opened.reason)
            return
        try:
            self._log("CONNECT", host, None, True, started, decision.rule)
            await self._send(opened.sock, first, up=True)
            await relay(conn, opened.sock, self.count, idle_timeout=IDLE_TIMEOUT)
        finally:
            opened.close()


class _Upstream:
    """An upstream connection and its place among the sandbox's allowed ones."""

    def __init__(self, sock: socket.socket, slots: asyncio.Semaphore) -> None:
        self.sock = sock
        self.pending = bytearray()  # read past the last response
        self.key: tuple[str, int] = ("", 0)
        self._slots: asyncio.Semaphore | None = slots

    def close(self) -> None:
        self.sock.close()
        if self._slots is not None:
            self._slots.release()
            self._slots = None


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}

_HOP_BY_HOP = sniff.HOP_BY_HOP
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")  # a header value: no CR, LF or other controls


def _response_head(head: framing.ResponseHead, close: bool) -> bytes:
    """The upstream's head for the client: its own hop-by-hop fields removed (they describe
    the upstream connection), and ``Connection: close`` when the proxy ends this one."""
    listed = {t.strip(b" \t").lower() for v in head.get_all(b"connection") for t in v.split(b",")}
    drop = (_HOP_BY_HOP | listed) - {b"content-length", b"transfer-encoding"}
    lines = [head.version + b" " + str(head.status).encode() + b" " + head.reason]
    lines += [n + b": " + v for n, v in head.headers if n.lower() not in drop]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _recv(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int, timeout: float
) -> bytes:
    """sock_recv with a deadline; ``asyncio.timeout`` rather than ``wait_for``, which
    wraps each call in a task of its own (a keep-alive request makes several)."""
    async with asyncio.timeout(timeout):
        return await loop.sock_recv(sock, size)


def _interim(head: framing.ResponseHead) -> bool:
    """1xx but 101, which framing refuses (the proxy never asks to switch protocols)."""
    return head.status < 200 and head.status != 101


def _expects_continue(head: sniff.RequestHead) -> bool:
    return any(v.strip().lower() == b"100-continue" for v in head.get_all(b"expect"))


def _norm(name: str) -> str:
    try:
        return normalize_host(name)
    except InvalidRequest:
        return ""


def _literal(address: str) -> str:
    """The dialled address as the rules see an IP literal (an IPv4-mapped one unwrapped)."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _sni_refusal(hello: sniff.ClientHello | str, host: str, policy: NetworkFilter) -> str:
    """Why a CONNECT tunnel's TLS may not pass: it must be TLS, and its SNI must be the host
    CONNECT asked for (or, to an IP literal, a name the policy allows)."""
    if isinstance(hello, str):
        return hello
    if hello.sni is None:
        if parse_literal(host) is None:
            return f"the TLS ClientHello names no server (SNI) for {host}"
        return ""
    sni = _norm(hello.sni)
    if parse_literal(host) is None:
        return (
            "" if sni == host else f"the TLS SNI {hello.sni} differs from the CONNECT host {host}"
        )
    decision = policy.decide(sni or hello.sni)
    return "" if decision.allowed else f"the TLS SNI {hello.sni}: {decision.rule}"


def _original_destination(conn: socket.socket) -> tuple[str, int]:
    """Where a connection redirected by nftables was going (conntrack, looked up in the
    socket's own namespace: the supervisor needs no capability for it). An IPv4 connection
    accepted by the dual-stack listener is tracked as IPv4: asking IPv6 for it is ENOENT."""
    if conn.family == socket.AF_INET6 and not str(conn.getsockname()[0]).startswith("::ffff:"):
        raw = conn.getsockopt(socket.IPPROTO_IPV6, _SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = conn.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return str(ipaddress.IPv4Address(raw[4:8])), port


__all__ = [
    "NetworkLog",
    "NetworkUsage",
    "SandboxProxy",
    "PROXY_PORT",
    "CAPTURE_ALL_PORT",
    "IPAddress",
]
