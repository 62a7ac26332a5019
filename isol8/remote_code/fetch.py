"""Fetching ``code_url`` on the host, before a run, under a ``RemoteCodePolicy``.

Upstream's fetcher (isol8-api.md §5.9) checks the first URL's host, then lets ``fetch``
resolve it again and follow redirects unchecked: a redirect to ``169.254.169.254`` or a
name that resolves differently the second time reaches anything the host can. Here every
hop is judged as the filtered network's proxy judges a request — scheme, host rules
(allowedHosts / blockedHosts, deny wins), then the SSRF guard on the resolved address —
and the connection goes to exactly the address that was judged
(isol8.network.outbound.open_upstream, the proxy's own resolver and connector, which tests
replace to keep traffic on loopback). TLS is verified against the system's CA roots, or
the policy's ``caFile``, for the hop's own host name.

http.client speaks the protocol (chunked bodies, header limits) over the socket that
open_upstream connected; the whole fetch, redirects included, shares one deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import re
import socket
import ssl
import time
import urllib.parse

from ..errors import InvalidRequest, Isol8Error
from ..network import outbound
from .policy import RemoteCodePolicy

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class RemoteCodeRefused(InvalidRequest):
    """``code_url`` is not allowed by the policy, or what it served is not acceptable code
    (too large, binary, not UTF-8, not the expected hash): nothing ran."""


class RemoteCodeUnavailable(Isol8Error):
    """``code_url`` could not be fetched (no such name, unreachable, an HTTP error, the
    fetch timeout): nothing ran."""


def fetch_code(url: object, policy: RemoteCodePolicy, *, code_hash: object = None,
               allow_insecure: bool = False) -> str:
    """The code at ``url`` as text, every policy check passed, or a Remote* error.

    Runs in a thread of its own: the resolver and connector are coroutines (the proxy's),
    and the caller may be a thread that already runs an event loop."""
    if not policy.enabled:
        raise RemoteCodeRefused("code_url: remote code is disabled; enable it with "
                                "remote_code={'enabled': True, 'allowedHosts': [...]} "
                                "(config: remoteCode)")
    if not isinstance(url, str) or not url:
        raise RemoteCodeRefused(f"code_url: expected a URL, got {url!r}")
    expected = _expected_hash(code_hash, policy)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="isol8-code-url") as pool:
        body = pool.submit(_fetch, url, policy, allow_insecure).result()
    digest = hashlib.sha256(body).hexdigest()
    if expected is not None and digest != expected:
        raise RemoteCodeRefused(f"code_url: sha256 {digest} does not match code_hash "
                                f"{expected}")
    if b"\0" in body:
        raise RemoteCodeRefused("code_url: the response is binary (it has NUL bytes), not code")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteCodeRefused(f"code_url: the response is not UTF-8 ({exc.reason} at byte "
                                f"{exc.start})") from None


def _expected_hash(code_hash: object, policy: RemoteCodePolicy) -> str | None:
    if code_hash is None:
        if policy.require_hash:
            raise RemoteCodeRefused("code_url: this policy requires code_hash (the sha256 "
                                    "of the code, hex)")
        return None
    if not isinstance(code_hash, str) or not _HEX64.match(code_hash.lower()):
        raise RemoteCodeRefused(f"code_hash: expected 64 hex digits (sha256), got "
                                f"{code_hash!r}")
    return code_hash.lower()


def _fetch(url: str, policy: RemoteCodePolicy, allow_insecure: bool) -> bytes:
    deadline = time.monotonic() + policy.fetch_timeout_ms / 1000
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            parts = _checked(url, policy, allow_insecure)
            response, sock = _get(parts, policy, deadline)
            try:
                if response.status in REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise RemoteCodeUnavailable(f"code_url: {url} answered "
                                                    f"{response.status} without a Location")
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status != 200:
                    raise RemoteCodeUnavailable(f"code_url: {url} answered {response.status} "
                                                f"{response.reason}")
                return _body(response, sock, policy.max_code_size, deadline, url)
            finally:
                response.close()
                sock.close()
    except (TimeoutError, asyncio.TimeoutError):
        raise RemoteCodeUnavailable(f"code_url: the fetch took longer than fetchTimeoutMs "
                                    f"({policy.fetch_timeout_ms} ms)") from None
    raise RemoteCodeUnavailable(f"code_url: more than {MAX_REDIRECTS} redirects")


def _checked(url: str, policy: RemoteCodePolicy, allow_insecure: bool
             ) -> urllib.parse.SplitResult:
    """Scheme and host rules, upstream's order: http needs allow_insecure_code_url, the
    scheme must be allowed, then the host (allowedHosts, blockedHosts)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 — raises on a malformed port
    except ValueError as exc:
        raise RemoteCodeRefused(f"code_url: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme == "http" and not allow_insecure:
        raise RemoteCodeRefused(f"code_url: {url} is plain http; https is required unless "
                                f"allow_insecure_code_url is set")
    if parts.scheme not in policy.allowed_schemes:
        raise RemoteCodeRefused(f"code_url: scheme {parts.scheme!r} of {url} is not in "
                                f"allowedSchemes {list(policy.allowed_schemes)}")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise RemoteCodeRefused(f"code_url: {url} must name a host and no credentials")
    decision = policy.hosts.decide(parts.hostname)
    if not decision.allowed:
        raise RemoteCodeRefused(f"code_url: host {parts.hostname} is not allowed "
                                f"({decision.rule})")
    return parts


def _get(parts: urllib.parse.SplitResult, policy: RemoteCodePolicy, deadline: float
         ) -> tuple[http.client.HTTPResponse, socket.socket]:
    """The response head of one GET, on a connection to the address the guard passed."""
    host = parts.hostname
    assert host is not None
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    opened = asyncio.run(asyncio.wait_for(outbound.open_upstream(host, port, policy.hosts),
                                          _left(deadline)))
    if isinstance(opened, outbound.Refused):
        # the guard's hint names the proxy's option; here the policy's key is the one
        raise RemoteCodeRefused("code_url: " + opened.reason.replace(
            "network_filter allow_private", "remoteCode.allowPrivate"))
    if isinstance(opened, outbound.Failed):
        raise RemoteCodeUnavailable(f"code_url: {opened.reason}")
    sock: socket.socket = opened.sock
    try:
        sock.setblocking(True)
        sock.settimeout(_left(deadline))
        if https:
            context = ssl.create_default_context(cafile=policy.ca_file)
            sock = context.wrap_socket(sock, server_hostname=host)
        connection = http.client.HTTPConnection(host, port)
        connection.sock = sock  # connected to the address judged, never resolved again
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", path, headers={
            "Host": parts.netloc, "Accept-Encoding": "identity", "User-Agent": "isol8",
            "Connection": "close"})
        return connection.getresponse(), sock
    except TimeoutError:
        sock.close()
        raise
    except ssl.SSLError as exc:
        sock.close()
        raise RemoteCodeUnavailable(f"code_url: TLS with {host} failed: "
                                    f"{exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        sock.close()
        raise RemoteCodeUnavailable(f"code_url: {host}: {exc}") from None


def _body(response: http.client.HTTPResponse, sock: socket.socket, cap: int,
          deadline: float, url: str) -> bytes:
    """The body, at most ``cap`` bytes (announced or streamed), within the deadline."""
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise RemoteCodeRefused(f"code_url: {url} is {length} bytes, over maxCodeSize {cap}")
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            sock.settimeout(_left(deadline))  # each read gets what is left, not a fresh wait
            chunk = response.read1(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > cap:
                raise RemoteCodeRefused(f"code_url: {url} is over maxCodeSize {cap} bytes")
            chunks.append(chunk)
    except TimeoutError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise RemoteCodeUnavailable(f"code_url: {url}: {exc}") from None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left
