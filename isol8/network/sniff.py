"""The upstream a sandboxed client asked for, from the first bytes it sent: I/O-free.

Two readers, both h11-style (bytes in, a typed result out, no sockets, bounded, fuzzable):

* :class:`RequestHeadReader` parses an HTTP/1.1 request head, for the proxy (absolute-URI
  requests and CONNECT) and for connections captured on port 80 (origin-form plus Host).
  It is strict exactly where request smuggling lives (RFC 9112 §6.3, §11.2): a proxy and
  the upstream must agree on where a message ends, so every framing ambiguity is refused
  rather than "repaired".
* :class:`ClientHelloReader` extracts SNI and ALPN from a TLS ClientHello, for CONNECT
  tunnels and connections captured on port 443; TLS is never terminated, only read.

Each reader is fed the bytes as they arrive; ``feed`` returns :data:`NEED_MORE` until it
has a verdict, then keeps returning that verdict. Neither looks at more input than its
bounds allow, so a hostile client cannot make the supervisor buffer or scan without limit.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "HeadLines",
    "parse_field",
    "MAX_REQUEST_LINE",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_CLIENT_HELLO",
    "NEED_MORE",
    "NeedMore",
    "RequestHead",
    "HttpError",
    "RequestHeadReader",
    "parse_request_head",
    "Upstream",
    "upstream_of",
    "to_origin_form",
    "HOP_BY_HOP",
    "normalize_hostname",
    "ClientHello",
    "NotTLS",
    "Malformed",
    "ClientHelloReader",
    "parse_client_hello",
]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
MAX_CLIENT_HELLO = 64 * 1024


@dataclass(frozen=True)
class NeedMore:
    """Not enough bytes for a verdict yet."""


NEED_MORE = NeedMore()


# ---------------------------------------------------------------------------------------
# HTTP/1.1 request head
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head. ``length`` counts the head's bytes (through the blank line)
    in the stream fed so far: the request body, or the next pipelined request, starts there.
    ``content_length`` is None when absent; ``chunked`` is True for ``Transfer-Encoding:
    chunked``. At most one of the two is set (both at once is refused)."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    length: int
    content_length: int | None = None
    chunked: bool = False

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]


@dataclass(frozen=True)
class HttpError:
    """A refusal: answer ``status`` (and close the connection), say ``reason`` in the log."""

    status: int
    reason: str


# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §5.5: field-value is VCHAR / obs-text with SP/HTAB inside; no other controls.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The request target: visible ASCII only (RFC 9112 §3.2; RFC 3986 has no raw SP or controls).
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_OWS = b" \t"


class HeadLines:
    """The line layer of an HTTP/1.1 head, request or response, fed incrementally.

    Lines must end in CRLF: a bare LF or bare CR is refused (RFC 9112 §2.2 allows a lenient
    recipient to accept a bare LF, but a proxy that does while the peer does not splits the
    stream differently from it). Leading empty lines are refused too, for the same reason.
    Each new LF is checked as it arrives, so a malformed head fails without waiting for the
    64 KiB bound; a bare CR is looked for before its line's LF, so the verdict does not
    depend on how the bytes were split. ``bad`` is the status of a malformed head, ``big``
    of an oversized one; ``first_line_max`` bounds the first line (a request line: 414).
    """

    def __init__(
        self,
        noun: str,
        first: str,
        bad: int,
        big: int,
        max_fields: int,
        first_line_max: int | None = None,
    ) -> None:
        self._noun, self._first, self._bad, self._big = noun, first, bad, big
        self._max_fields, self._first_line_max = max_fields, first_line_max
        self._buf = bytearray()
        self._line_start = 0
        self._scanned = 0  # bytes before this were searched for LF and bare CR already
        self._lines: list[bytes] = []

    def feed(self, data: bytes) -> NeedMore | HttpError | tuple[list[bytes], int]:
        """The head's lines (CRLF removed, the blank one excluded) and its length in the
        stream fed so far, once the blank line has come."""
        room = MAX_HEAD - len(self._buf)
        # Bytes past the head bound are never looked at (the caller keeps them anyway).
        self._buf += data[: max(room, 0)]
        return self._scan(overflow=len(data) > room)

    def _too_long_first(self, length: int) -> HttpError | None:
        if self._first_line_max is not None and not self._lines and length > self._first_line_max:
            return HttpError(414, f"{self._first} longer than {self._first_line_max // 1024} KiB")
        return None

    def _scan(self, overflow: bool) -> NeedMore | HttpError | tuple[list[bytes], int]:
        buf, noun = self._buf, self._noun
        while True:
            lf = buf.find(b"\n", max(self._line_start, self._scanned))
            if lf < 0:
                break
            line = bytes(buf[self._line_start : lf + 1])
            self._line_start = lf + 1
            long_first = self._too_long_first(len(line))
            if long_first:
                return long_first
            content = line[:-2]
            if b"\r" in content:
                return HttpError(self._bad, f"bare CR in the {noun} head")
            if line[-2:] != b"\r\n":
                return HttpError(self._bad, f"bare LF in the {noun} head")
            if not content:
                if not self._lines:
                    return HttpError(self._bad, f"empty line before the {self._first}")
                return self._lines, self._line_start
            self._lines.append(content)
            if len(self._lines) > self._max_fields + 1:
                return HttpError(self._big, f"more than {self._max_fields} {noun} header fields")
        long_first = self._too_long_first(len(buf) - self._line_start)
        if long_first:
            return long_first
        # A CR must be followed by LF; the last byte's follower has not arrived yet.
        if b"\r" in buf[max(self._line_start, self._scanned) : len(buf) - 1]:
            return HttpError(self._bad, f"bare CR in the {noun} head")
        self._scanned = max(len(buf) - 1, 0)
        if overflow or len(buf) >= MAX_HEAD:
            return HttpError(self._big, f"{noun} head larger than {MAX_HEAD // 1024} KiB")
        return NEED_MORE


def parse_field(line: bytes) -> tuple[bytes, bytes] | str:
    """A header or trailer field line (RFC 9112 §5), CRLF removed, or what is wrong."""
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold must be refused (or replaced) outside message/http.
        return "obsolete line folding"
    name, colon, value = line.partition(b":")
    if not colon:
        return "a field line without a colon"
    if name[-1:] in (b" ", b"\t"):
        # RFC 9112 §5.1: whitespace between field name and colon MUST be rejected.
        return "whitespace before a colon"
    if not _TOKEN.match(name):
        return "a field name that is not a token"
    value = value.strip(_OWS)
    if _BAD_VALUE.search(value):
        return "a control character in a field value"
    return name, value


class RequestHeadReader:
    """Incremental request-head parser; one instance per request. The line rules are
    :class:`HeadLines`'; a request line is at most 8 KiB (414), a head 64 KiB and 100
    fields (431)."""

    def __init__(self) -> None:
        self._lines = HeadLines("request", "request line", 400, 431, MAX_HEADERS, MAX_REQUEST_LINE)
        self._result: NeedMore | RequestHead | HttpError = NEED_MORE

    def feed(self, data: bytes) -> NeedMore | RequestHead | HttpError:
        if self._result is not NEED_MORE:
            return self._result
        lines = self._lines.feed(data)
        self._result = _parse(*lines) if isinstance(lines, tuple) else lines
        return self._result


def parse_request_head(data: bytes) -> NeedMore | RequestHead | HttpError:
    """One-shot form of :class:`RequestHeadReader` for a buffer already in hand."""
    return RequestHeadReader().feed(data)


def _parse(lines: list[bytes], length: int) -> RequestHead | HttpError:
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return HttpError(400, "request line is not 'method SP target SP version'")
    method, target, version = parts
    if not _TOKEN.match(method):
        return HttpError(400, "method is not a token")
    if not _TARGET.match(target):
        return HttpError(400, "request target has spaces, controls or non-ASCII bytes")
    m = _VERSION.match(version)
    if not m:
        return HttpError(400, "malformed HTTP version")
    if m.group(1) != b"1":
        return HttpError(505, "only HTTP/1.x is supported")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        field = parse_field(line)
        if isinstance(field, str):
            return HttpError(400, f"{field} in the request head")
        headers.append(field)
    return _framing(method, target, version, headers, length)


def _framing(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int,
) -> RequestHead | HttpError:
    """RFC 9112 §6: exactly one way to find the body's end, or a refusal."""
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    content_length: int | None = None
    chunked = False
    if lengths and codings:
        # §6.1 lets a server drop Content-Length here; the upstream may not: refuse.
        return HttpError(400, "Content-Length together with Transfer-Encoding")
    if len(lengths) > 1:
        return HttpError(400, "more than one Content-Length")
    if lengths:
        if not _DIGITS.match(lengths[0]):
            return HttpError(400, "Content-Length is not a decimal number")
        content_length = int(lengths[0])
    if codings:
        if version == b"HTTP/1.0":
            return HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        items = [c.strip(_OWS).lower() for c in b",".join(codings).split(b",")]
        items = [c for c in items if c]
        if not items or items[-1] != b"chunked":
            return HttpError(400, "Transfer-Encoding does not end in chunked")
        if items.count(b"chunked") > 1:
            return HttpError(400, "chunked applied more than once")
        if items != [b"chunked"]:
            return HttpError(501, "Transfer-Encoding other than a single chunked")
        chunked = True
    return RequestHead(method, target, version, headers, length, content_length, chunked)


# ---------------------------------------------------------------------------------------
# Upstream of a request, and the head to forward
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """Where a request goes. ``host`` is a normalized hostname or a canonical IP literal
    (no brackets); ``path`` (path and query) is for the network log, None for CONNECT.
    """

    host: str
    port: int
    path: str | None


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
_NUMERIC_TLD = re.compile(r"([0-9]+|0x[0-9a-f]*)\Z")


def normalize_hostname(name: str) -> str | None:
    """Lowercase ``name`` without its trailing dot, or None if it is not a DNS hostname.

    Labels are letters, digits, hyphen (RFC 1123 §2.1) and underscore (present in real
    names, harmless here); 1–63 octets, 253 in all. The last label may not be numeric or
    ``0x…`` (RFC 3696 §2): ``127.1``, ``0177.0.0.1`` or ``0x7f000001`` are not names, and
    ``inet_aton`` would read them as loopback addresses behind the SSRF guard's back.
    IP literals are not hostnames either: the caller checks those separately.
    """
    if not name.isascii():
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    if _NUMERIC_TLD.match(labels[-1]):
        return None
    return name


def _host(raw: bytes) -> str | None:
    """A URI host (RFC 3986 §3.2.2): ``[IPv6]``, dotted IPv4 or a hostname; no zone ids."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            return None
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return normalize_hostname(text)


def _authority(raw: bytes) -> tuple[str, int | None] | None:
    """``host[:port]`` with the port None when absent (or empty, RFC 3986 §3.2.3);
    userinfo is refused (RFC 9110 §4.2.4 forbids it in http URIs)."""
    if b"@" in raw:
        return None
    host_part, port = raw, None
    colon = raw.rfind(b":")
    if colon > raw.rfind(b"]"):
        host_part, port_part = raw[:colon], raw[colon + 1 :]
        if port_part:
            if not re.fullmatch(rb"[0-9]{1,5}", port_part) or not 0 < int(port_part) < 65536:
                return None
            port = int(port_part)
    host = _host(host_part)
    return None if host is None else (host, port)


def _one_host_header(
    head: RequestHead, required: bool
) -> tuple[str, int | None] | None | HttpError:
    hosts = head.get_all(b"host")
    if len(hosts) > 1:
        return HttpError(400, "more than one Host header")
    if not hosts:
        return HttpError(400, "no Host header") if required else None
    parsed = _authority(hosts[0])
    return parsed if parsed is not None else HttpError(400, "invalid Host header")


def upstream_of(head: RequestHead, default_port: int = 80) -> Upstream | HttpError:
    """The upstream of a proxy request (absolute-URI or CONNECT) or a captured one
    (origin-form with a Host header; ``default_port`` is the port the client dialled).

    RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header. When the target is an
    absolute URI the RFC tells a proxy to ignore Host; here a Host naming another upstream
    is refused instead, since the upstream would see the Host and a policy checked against
    the URI would not describe the request it serves.
    """
    target = head.target
    if head.method == b"CONNECT":
        authority = _authority(target)
        if authority is None or authority[1] is None:
            return HttpError(400, "CONNECT target is not host:port")
        host_hdr = _one_host_header(head, required=False)
        if isinstance(host_hdr, HttpError):
            return host_hdr
        if host_hdr is not None and (
            host_hdr[0] != authority[0] or host_hdr[1] not in (None, authority[1])
        ):
            return HttpError(400, "Host header differs from the CONNECT target")
        return Upstream(authority[0], authority[1], None)
    if target.startswith(b"/"):
        if b"#" in target:
            return HttpError(400, "fragment in the request target")
        host_hdr = _one_host_header(head, required=True)
        if isinstance(host_hdr, HttpError):
            return host_hdr
        assert host_hdr is not None
        port = default_port if host_hdr[1] is None else host_hdr[1]
        return Upstream(host_hdr[0], port, target.decode("ascii"))
    scheme, sep, rest = target.partition(b"://")
    if not sep or not _TOKEN.match(scheme):
        return HttpError(400, "request target is neither origin-form nor an absolute URI")
    if scheme.lower() != b"http":
        return HttpError(501, "only http:// URIs are proxied; use CONNECT for TLS")
    if b"#" in rest:
        return HttpError(400, "fragment in the request target")
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority = _authority(rest[:end])
    if authority is None:
        return HttpError(400, "invalid authority in the request URI")
    host, port = authority[0], 80 if authority[1] is None else authority[1]
    path = rest[end:]
    path = path if path.startswith(b"/") else b"/" + path
    host_hdr = _one_host_header(head, required=head.version == b"HTTP/1.1")
    if isinstance(host_hdr, HttpError):
        return host_hdr
    if host_hdr is not None and (host_hdr[0], host_hdr[1] or 80) != (host, port):
        return HttpError(400, "Host header differs from the request URI")
    return Upstream(host, port, path.decode("ascii"))


# RFC 9110 §7.6.1 and the proxy-only fields. Transfer-Encoding is hop-by-hop too, but the
# proxy relays the chunked body byte for byte, so the coding is kept as sent. Upgrade is
# dropped: the proxy relays request/response pairs and does not switch to a tunnel on a
# 101, so WebSocket through the proxy goes over CONNECT (RFC 6455 §4.1), as clients do.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
# Never removed because Connection names them: dropping these would change the framing or
# the upstream the policy checked ("Connection: host, content-length" is an old trick).
_END_TO_END = frozenset({b"host", b"content-length", b"transfer-encoding"})


def to_origin_form(head: RequestHead, upstream: Upstream) -> bytes:
    """The head to send upstream: origin-form target, hop-by-hop fields removed (those in
    :data:`HOP_BY_HOP` and those the Connection header lists), a Host header that names
    ``upstream`` if the client sent none (HTTP/1.0). The proxy adds its own Connection
    field if it wants one. ``upstream`` is :func:`upstream_of`'s answer for ``head``;
    a CONNECT has no origin-form (its tunnel carries the client's bytes unchanged), so
    passing one is a ValueError."""
    if upstream.path is None:
        raise ValueError("a CONNECT request has no origin-form")
    listed = {
        token.strip(_OWS).lower()
        for value in head.get_all(b"connection")
        for token in value.split(b",")
    }
    drop = (HOP_BY_HOP | listed) - _END_TO_END
    out = [head.method + b" " + upstream.path.encode("ascii") + b" " + head.version]
    if not head.get_all(b"host"):
        host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        if upstream.port != 80:
            host += f":{upstream.port}"
        out.append(b"Host: " + host.encode("ascii"))
    out += [n + b": " + v for n, v in head.headers if n.lower() not in drop]
    return b"\r\n".join(out) + b"\r\n\r\n"


# ---------------------------------------------------------------------------------------
# TLS ClientHello
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientHello:
    """What a ClientHello asks for. With ECH (RFC 9849) ``sni`` is the outer, public name:
    the only one a passive reader can see, and the one the connection is routed by.
    ALPN names are decoded as Latin-1: any byte string (GREASE values too) round-trips.
    """

    sni: str | None
    alpn: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NotTLS:
    """The bytes do not start a TLS handshake record."""


@dataclass(frozen=True)
class Malformed:
    """A TLS handshake that breaks RFC 8446 / RFC 6066 or the size bounds."""

    reason: str


_HANDSHAKE = 22
_CLIENT_HELLO = 1
_RECORD_MAX = 2**14  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14.
_MAX_RECORDS = 64  # the 64 KiB bound needs 5 full records; more is a slow-drip attack
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class _Truncated(Exception):
    pass


class _Bad(Exception):
    pass


class ClientHelloReader:
    """Incremental ClientHello reader: reassembles the handshake message from as many
    records as it spans (RFC 8446 §5.1 lets a client fragment it), reading each record's
    header before trusting its length, and stops at :data:`MAX_CLIENT_HELLO`."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self._pos = 0  # first unconsumed raw byte (start of the next record header)
        self._records = 0
        self._msg = bytearray()
        self._result: NeedMore | ClientHello | NotTLS | Malformed = NEED_MORE

    def feed(self, data: bytes) -> NeedMore | ClientHello | NotTLS | Malformed:
        if self._result is NEED_MORE:
            self._raw += data
            self._result = self._step()
            if self._result is not NEED_MORE:
                self._raw = bytearray()
        return self._result

    def _step(self) -> NeedMore | ClientHello | NotTLS | Malformed:
        raw = self._raw
        while True:
            if self._records == 0:
                if raw[:1] and raw[0] != _HANDSHAKE:
                    return NotTLS()
                if raw[1:2] and raw[1] != 3:
                    return NotTLS()
            if len(raw) - self._pos < 5:
                return NEED_MORE
            ctype, major = raw[self._pos], raw[self._pos + 1]
            rlen = int.from_bytes(raw[self._pos + 3 : self._pos + 5], "big")
            if ctype != _HANDSHAKE or major != 3:
                return Malformed("non-handshake record before the ClientHello ended")
            if rlen == 0 or rlen > _RECORD_MAX:
                return Malformed(f"handshake record length {rlen}")
            if len(raw) - self._pos - 5 < rlen:
                return NEED_MORE
            self._records += 1
            if self._records > _MAX_RECORDS:
                return Malformed(f"ClientHello spread over more than {_MAX_RECORDS} records")
            self._msg += raw[self._pos + 5 : self._pos + 5 + rlen]
            self._pos += 5 + rlen
            # Drop consumed bytes so the buffer stays within one record plus a header.
            del raw[: self._pos]
            self._pos = 0
            if len(self._msg) >= 4:
                if self._msg[0] != _CLIENT_HELLO:
                    return Malformed("first handshake message is not a ClientHello")
                mlen = int.from_bytes(self._msg[1:4], "big")
                if mlen > MAX_CLIENT_HELLO:
                    return Malformed("ClientHello larger than 64 KiB")
                if len(self._msg) >= 4 + mlen:
                    # Bytes after the message (another handshake message) are not ours.
                    try:
                        return _client_hello(bytes(self._msg[4 : 4 + mlen]))
                    except _Truncated:
                        return Malformed("ClientHello field runs past its end")
                    except _Bad as e:
                        return Malformed(str(e))


def parse_client_hello(data: bytes) -> NeedMore | ClientHello | NotTLS | Malformed:
    """One-shot form of :class:`ClientHelloReader` for a buffer already in hand."""
    return ClientHelloReader().feed(data)


class _Cursor:
    """Length-prefixed reads over one buffer; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vec(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    def done(self) -> bool:
        return self.pos == len(self.data)


def _client_hello(body: bytes) -> ClientHello:
    """RFC 8446 §4.1.2 (and the TLS 1.2 form, RFC 5246 §7.4.1.2, which it extends)."""
    c = _Cursor(body)
    c.take(2 + 32)  # legacy_version, random
    if len(c.vec(1)) > 32:
        raise _Bad("legacy_session_id longer than 32 bytes")
    suites = c.vec(2)
    if not suites or len(suites) % 2:
        raise _Bad("empty or odd cipher_suites")
    if not c.vec(1):
        raise _Bad("empty legacy_compression_methods")
    if c.done():
        return ClientHello(None, [])  # a hello without extensions (pre-TLS 1.2 clients)
    exts = _Cursor(c.vec(2))
    if not c.done():
        raise _Bad("bytes after the extensions")
    seen: set[int] = set()
    sni: str | None = None
    alpn: list[str] = []
    while not exts.done():
        etype = exts.uint(2)
        edata = exts.vec(2)
        if etype in seen:
            # RFC 8446 §4.2: at most one extension of each type. GREASE (RFC 8701) and ECH
            # (0xfe0d) are just types this reader skips.
            raise _Bad(f"extension {etype} appears twice")
        seen.add(etype)
        if etype == _EXT_SERVER_NAME:
            sni = _server_name(edata)
        elif etype == _EXT_ALPN:
            alpn = _alpn(edata)
    return ClientHello(sni, alpn)


def _server_name(data: bytes) -> str:
    """RFC 6066 §3: one host_name, a DNS name in A-labels; IP literals are not permitted."""
    outer = _Cursor(data)
    names = _Cursor(outer.vec(2))
    if not outer.done():
        raise _Bad("bytes after the server_name list")
    found: str | None = None
    while not names.done():
        if names.uint(1) != 0:
            raise _Bad("server_name of a type other than host_name")
        raw = names.vec(2)
        if found is not None:
            raise _Bad("more than one host_name in server_name")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _Bad("server_name is not ASCII") from None
        try:
            ipaddress.ip_address(text.rstrip("."))
        except ValueError:
            pass
        else:
            raise _Bad("server_name is an IP literal")
        name = normalize_hostname(text)
        if name is None:
            raise _Bad("server_name is not a valid hostname")
        found = name
    if found is None:
        raise _Bad("empty server_name list")
    return found


def _alpn(data: bytes) -> list[str]:
    """RFC 7301 §3.1: a non-empty list of non-empty protocol names."""
    outer = _Cursor(data)
    names = _Cursor(outer.vec(2))
    if not outer.done():
        raise _Bad("bytes after the ALPN list")
    out: list[str] = []
    while not names.done():
        proto = names.vec(1)
        if not proto:
            raise _Bad("empty ALPN protocol name")
        out.append(proto.decode("latin-1"))
    if not out:
        raise _Bad("empty ALPN list")
    return out
