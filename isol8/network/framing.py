"""Where each HTTP/1.1 message ends, for a proxy that keeps connections alive: I/O-free.

A proxy that reuses a connection checks and logs every request on it, so it must find the
end of each request body and of each response exactly where the client and the upstream
find it: a disagreement is request smuggling (RFC 9112 §11.2), the next "request" being
bytes the policy never saw. This module answers that question in the h11 style of
:mod:`isol8.network.sniff` (bytes in, a verdict out, no sockets, bounded, fuzzable):

* :class:`ResponseHeadReader` parses an upstream's response head as strictly as
  :class:`~isol8.network.sniff.RequestHeadReader` parses a request head;
* :func:`request_framing` and :func:`response_framing` apply RFC 9112 §6.3 to a head;
* :func:`keep_alive` says whether a message lets its connection persist (RFC 9112 §9.3);
* :class:`BodyScanner` follows one body through the stream without copying it, so the
  caller relays it (or splices it) and knows where the next message starts.

Wherever the RFC lets a recipient choose between leniency and refusal, this module
refuses: a refusal closes one connection, a leniency the other side does not share splits
the stream differently from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from isol8.network.sniff import (
    _OWS,
    _TOKEN,
    _VERSION,
    NEED_MORE,
    HeadLines,
    HttpError,
    NeedMore,
    RequestHead,
    parse_field,
)

__all__ = [
    "MAX_RESPONSE_HEADERS",
    "MAX_CHUNK_SIZE_DIGITS",
    "MAX_CHUNK_LINE",
    "MAX_TRAILERS",
    "Framing",
    "FramingError",
    "ResponseHead",
    "ResponseHeadReader",
    "parse_response_head",
    "request_framing",
    "response_framing",
    "keep_alive",
    "BodyScanner",
]

# sniff bounds a request to 100 fields; responses carry more (Set-Cookie, CSP, tracing).
# The bound keeps the parsed list small: 64 KiB of 4-byte fields would be 16 K tuples.
MAX_RESPONSE_HEADERS = 256
# 16 hex digits hold any 64-bit size; more is either zero padding or an overflow attempt.
MAX_CHUNK_SIZE_DIGITS = 16
# A chunk-size line with its extensions and CRLF.
MAX_CHUNK_LINE = 4 * 1024
# The trailer section, its final CRLF included.
MAX_TRAILERS = 64 * 1024

# RFC 9110 §5.6.2: tchar, for the chunk extensions below (sniff has the token itself).
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# RFC 9112 §4: HTTP-version SP 3DIGIT SP [reason-phrase], reason = *(HTAB / SP / VCHAR /
# obs-text). The SP before an empty reason may be missing (see ResponseHeadReader).
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
# ext-val = token / quoted-string (RFC 9110 §5.6.4). The alternatives are disjoint, so
# matching is linear in the (bounded) line.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*%s+(?:[ \t]*=[ \t]*(?:%s+|%s))?)*\Z" % (_TCHAR, _TCHAR, _QUOTED)
)
_HEX = b"0123456789abcdefABCDEF"
_LF = re.compile(b"\n")


@dataclass(frozen=True)
class Framing:
    """How a message body is delimited (RFC 9112 §6.3): ``none`` (no body), ``length``
    (``length`` bytes), ``chunked`` (RFC 9112 §7.1) or ``close`` (until the sender
    closes the connection, which then cannot be reused)."""

    kind: Literal["none", "length", "chunked", "close"]
    length: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "length", "chunked", "close"):
            raise ValueError(f"unknown framing kind {self.kind!r}")
        if self.length < 0 or (self.length and self.kind != "length"):
            raise ValueError(f"invalid length {self.length} for framing {self.kind!r}")


_NONE = Framing("none")
_CHUNKED = Framing("chunked")
_CLOSE = Framing("close")


class FramingError(ValueError):
    """A body that breaks its framing; ``reason`` is for the network log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------
# Response heads
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseHead:
    """A parsed response head. ``length`` counts the head's bytes (through the blank line)
    in the stream fed so far: the body, or the next response, starts there."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]


class ResponseHeadReader:
    """Incremental response-head parser; one instance per response head (a 1xx interim
    response and the final one each need their own). Every refusal is a 502: the upstream
    sent something the proxy will not relay.

    Lines must end in CRLF: a bare LF or bare CR is refused, as are empty lines before the
    status line and obs-fold, exactly as :class:`~isol8.network.sniff.RequestHeadReader`
    does and for the same reason (the sandboxed client re-parses what is relayed, and must
    find the same boundaries). One leniency: ``HTTP/1.1 200`` without the SP that RFC 9112
    §4 puts before an empty reason phrase is accepted (some servers send it, h11 accepts
    it). It cannot desynchronize anyone: the line still ends at its CRLF, and the status
    code, the only part framing depends on, reads the same with or without the SP.
    """

    def __init__(self) -> None:
        self._lines = HeadLines("response", "status line", 502, 502, MAX_RESPONSE_HEADERS)
        self._result: NeedMore | ResponseHead | HttpError = NEED_MORE

    def feed(self, data: bytes) -> NeedMore | ResponseHead | HttpError:
        if self._result is not NEED_MORE:
            return self._result
        lines = self._lines.feed(data)
        self._result = _parse_response(*lines) if isinstance(lines, tuple) else lines
        return self._result


def parse_response_head(data: bytes) -> NeedMore | ResponseHead | HttpError:
    """One-shot form of :class:`ResponseHeadReader` for a buffer already in hand."""
    return ResponseHeadReader().feed(data)


def _parse_response(lines: list[bytes], length: int) -> ResponseHead | HttpError:
    m = _STATUS_LINE.match(lines[0])
    if not m:
        return HttpError(502, "status line is not 'HTTP/x.y SP 3DIGIT SP reason'")
    version, code, reason = m.group(1), int(m.group(2)), m.group(3) or b""
    if version[5:6] != b"1":
        return HttpError(502, "upstream answered with an HTTP version other than 1.x")
    if not 100 <= code <= 599:
        # RFC 9110 §15: values outside 100..599 are invalid.
        return HttpError(502, f"status code {code} outside 100..599")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        field = parse_field(line)
        if isinstance(field, str):
            return HttpError(502, f"{field} in the response head")
        headers.append(field)
    return ResponseHead(version, code, reason, headers, length)


# ---------------------------------------------------------------------------------------
# Framing of a head (RFC 9112 §6.3)
# ---------------------------------------------------------------------------------------


def request_framing(head: RequestHead) -> Framing:
    """The framing of a request's body. Requests are never close-delimited (RFC 9112
    §6.3 item 7: no length means no body); sniff already refused every ambiguous head.
    A CONNECT has no content (RFC 9110 §9.3.6): what follows its head is tunnel data."""
    if head.method == b"CONNECT":
        return _NONE
    if head.chunked:
        return _CHUNKED
    if head.content_length is not None:
        return Framing("length", head.content_length)
    return _NONE


def response_framing(head: ResponseHead, request_method: bytes) -> Framing | HttpError:
    """The framing of a response's body, given the method of the request it answers
    (RFC 9112 §6.3, in its order), or a 502 where the upstream's framing is ambiguous.

    ``none`` for a 1xx means an interim response: the final response to the same request
    follows it (RFC 9110 §15.2). A 101 is refused: the proxy never forwards Upgrade
    (:data:`~isol8.network.sniff.HOP_BY_HOP`), so a switch it did not ask for would make
    the proxy read the new protocol's bytes as the next HTTP response.
    """
    status = head.status
    if status == 101:
        return HttpError(502, "101 Switching Protocols to a request without Upgrade")
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return _NONE
    if request_method == b"CONNECT" and status < 300:
        # RFC 9110 §9.3.6: the client MUST ignore Content-Length and Transfer-Encoding.
        return _NONE
    codings = head.get_all(b"transfer-encoding")
    lengths = head.get_all(b"content-length")
    if codings and lengths:
        # §6.3 item 3: Transfer-Encoding overrides, but "ought to be handled as an error";
        # a client that picks Content-Length would split the stream elsewhere.
        return HttpError(502, "Content-Length together with Transfer-Encoding")
    if codings:
        return _coding_framing(head.version, codings)
    if lengths:
        return _length_framing(lengths)
    return _CLOSE


def _coding_framing(version: bytes, codings: list[bytes]) -> Framing | HttpError:
    if version == b"HTTP/1.0":
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        return HttpError(502, "Transfer-Encoding in an HTTP/1.0 response")
    # RFC 9110 §5.6.1: empty list elements are ignored.
    items = [c.strip(_OWS) for c in b",".join(codings).split(b",")]
    items = [c for c in items if c]
    if not items:
        return HttpError(502, "empty Transfer-Encoding")
    names: list[bytes] = []
    for item in items:
        name = item.partition(b";")[0].rstrip(_OWS).lower()
        if not _TOKEN.match(name):
            return HttpError(502, "Transfer-Encoding names a coding that is not a token")
        if name == b"chunked" and name != item.lower():
            # RFC 9112 §7.1 defines no parameters for chunked; a client that ignores them
            # would read a chunked body where the proxy reads to the close, or vice versa.
            return HttpError(502, "chunked with parameters")
        names.append(name)
    if names.count(b"chunked") > 1:
        # RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
        return HttpError(502, "chunked applied more than once")
    # §6.3 item 4: chunked last is chunked; otherwise the body runs until the close.
    return _CHUNKED if names[-1] == b"chunked" else _CLOSE


def _length_framing(lengths: list[bytes]) -> Framing | HttpError:
    # RFC 9110 §8.6: a list of identical values ("42, 42", or repeated fields) may be
    # taken as that value; anything else is an unrecoverable error.
    values: set[int] = set()
    for item in b",".join(lengths).split(b","):
        item = item.strip(_OWS)
        if not _DIGITS.match(item):
            return HttpError(502, "Content-Length is not a decimal number")
        values.add(int(item))
    if len(values) > 1:
        return HttpError(502, "differing Content-Length values")
    return Framing("length", values.pop())


def keep_alive(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a message lets its connection carry another one (RFC 9112 §9.3): HTTP/1.1
    (or a later 1.x) unless Connection lists ``close``; HTTP/1.0 only if it lists
    ``keep-alive`` and not ``close``; anything else never.

    This is about the message's sender only. The caller still closes after a ``close``
    framed body, and RFC 9112 §9.3 forbids a proxy a persistent connection with an
    HTTP/1.0 client whatever its Connection header says (RFC 2068 §19.7.1: such clients
    forward Connection: keep-alive through proxies that do not understand it)."""
    tokens = {
        token.strip(_OWS).lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    m = _VERSION.match(version)
    if m is None or m.group(1) != b"1" or b"close" in tokens:
        return False
    return m.group(2) != b"0" or b"keep-alive" in tokens


# ---------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------

_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER = range(5)


class BodyScanner:
    """Follows a body of a given Framing through the bytes that carry it, without copying.

    Only chunk-size lines and trailer fields are buffered, each within its bound; chunk
    data is counted, never looked at. Results do not depend on how the stream is split
    into ``feed`` calls: the same bytes give the same count, ``done`` and error reason.
    After an error every ``feed`` raises it again.
    """

    def __init__(self, framing: Framing) -> None:
        self._kind = framing.kind
        self.done = framing.kind == "none" or (framing.kind == "length" and framing.length == 0)
        self.remaining: int | None = framing.length if framing.kind == "length" else None
        self._state = _SIZE
        self._chunk_left = 0
        self._line = bytearray()
        self._trailer_bytes = 0  # completed trailer lines, CRLFs included
        self._error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """How many leading bytes of data belong to the body (the rest starts the next
        message). Raises FramingError (a ValueError subclass with a reason) on malformed
        chunked encoding."""
        if self._error is not None:
            raise FramingError(self._error)
        if self.done:
            return 0
        # Released before returning or raising: a live view would stop the caller from
        # resizing its bytearray (BufferError) while the exception is kept.
        with memoryview(data) as raw, raw.cast("B") as view:
            if self._kind == "close":
                return len(view)
            if self._kind == "length":
                assert self.remaining is not None
                n = min(self.remaining, len(view))
                self.remaining -= n
                self.done = self.remaining == 0
                return n
            try:
                return self._chunked(view)
            except FramingError as e:
                self._error = e.reason
        # The traceback keeps this frame: it must not keep the caller's view alive either.
        del data
        raise FramingError(self._error)

    def _chunked(self, view: memoryview) -> int:
        pos, end = 0, len(view)
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                n = min(self._chunk_left, end - pos)
                pos += n
                self._chunk_left -= n
                if not self._chunk_left:
                    self._state = _DATA_CR
            elif state == _DATA_CR or state == _DATA_LF:
                if view[pos] != (13 if state == _DATA_CR else 10):
                    raise FramingError("chunk data not followed by CRLF")
                pos += 1
                self._state = _SIZE if state == _DATA_LF else _DATA_LF
            else:
                pos = self._line_bytes(view, pos, end)
        return pos

    def _line_bytes(self, view: memoryview, pos: int, end: int) -> int:
        """Take bytes of a chunk-size or trailer line, up to its LF or its bound."""
        sizing = self._state == _SIZE
        limit = MAX_CHUNK_LINE if sizing else MAX_TRAILERS - self._trailer_bytes
        before = len(self._line)
        stop = min(end, pos + limit - before)
        m = _LF.search(view, pos, stop)
        taken = m.end() if m else stop
        self._line += view[pos:taken]
        if sizing and before <= MAX_CHUNK_SIZE_DIGITS:
            _check_size_digits(self._line)
        if m is None:
            if len(self._line) >= limit:
                if sizing:
                    raise FramingError(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                raise FramingError(f"trailer section larger than {MAX_TRAILERS} bytes")
            return taken
        line = bytes(self._line)
        self._line.clear()
        if sizing:
            self._size_line(line)
        else:
            self._trailer_bytes += len(line)
            self._trailer_line(line)
        return taken

    def _size_line(self, line: bytes) -> None:
        if line[-2:] != b"\r\n":
            raise FramingError("bare LF in chunked encoding")
        digits = len(line) - len(line.lstrip(_HEX))
        ext = line[digits:-2]
        if b"\r" in ext:
            raise FramingError("bare CR in chunked encoding")
        if not _CHUNK_EXT.match(ext):
            raise FramingError("malformed chunk extension")
        size = int(line[:digits], 16)
        if size:
            self._chunk_left = size
            self._state = _DATA
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if line[-2:] != b"\r\n":
            raise FramingError("bare LF in the trailer section")
        content = line[:-2]
        if not content:
            self.done = True
            return
        if b"\r" in content:
            raise FramingError("bare CR in the trailer section")
        field = parse_field(content)
        if isinstance(field, str):
            raise FramingError(f"{field} in the trailer section")


def _check_size_digits(line: bytearray) -> None:
    """The checks that a prefix of a chunk-size line can fail: run on every prefix, so a
    garbage line fails at its first byte, and with the same reason however it was split."""
    head = line[: MAX_CHUNK_SIZE_DIGITS + 1]
    digits = len(head) - len(head.lstrip(_HEX))
    if head and not digits:
        raise FramingError("chunk size is not a hexadecimal number")
    if digits > MAX_CHUNK_SIZE_DIGITS:
        raise FramingError(f"chunk size longer than {MAX_CHUNK_SIZE_DIGITS} hex digits")
