"""Output capture with a hard cap: the supervisor never holds more than the cap per stream.

Bytes past the cap are counted and discarded as they arrive, and reading never stops, so a
flooding child is never blocked on a full pipe. Secrets are masked first (so a cut never
leaves half a secret), then the kept bytes are cut at a UTF-8 boundary, decoded with
replacement, and trimmed at the end as upstream does.
"""

from __future__ import annotations

from .secrets import Masker

TIMEOUT_MARKER = "--- EXECUTION TIMED OUT ---"


def truncation_marker(total: int, limit: int) -> str:
    return f"\n\n--- OUTPUT TRUNCATED ({total} bytes, limit: {limit}) ---"


class CappedOutput:
    __slots__ = ("limit", "total", "_kept", "_masker")

    def __init__(self, limit: int, masker: Masker | None = None) -> None:
        self.limit = limit
        self.total = 0
        self._kept = bytearray()
        self._masker = masker

    def feed(self, data: bytes) -> bytes:
        """Take a chunk; returns what of it was kept (masked, within the cap): what a
        stream may show now."""
        if self._masker is not None:
            data = self._masker.feed(data)
        return self._keep(data)

    def end(self) -> bytes:
        """The stream has ended: release what the masker held back; returns what was kept."""
        return self._keep(self._masker.flush()) if self._masker is not None else b""

    def _keep(self, data: bytes) -> bytes:
        room = self.limit - len(self._kept)
        kept = data[:room] if room > 0 else b""
        self._kept += kept
        self.total += len(data)
        return kept

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def data(self) -> bytes:
        """The kept bytes as they came, once the stream has ended (binary-safe)."""
        self.end()
        return bytes(self._kept)

    def text(self) -> str:
        """The stream's text, once it has ended."""
        self.end()
        kept = bytes(self._kept)
        if not self.truncated:
            return kept.decode("utf-8", "replace").rstrip()
        cut = utf8_boundary(kept)
        return (kept[:cut].decode("utf-8", "replace")
                + truncation_marker(self.total, self.limit)).rstrip()


def utf8_boundary(data: bytes) -> int:
    """The largest length <= len(data) that does not split a UTF-8 sequence."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte < 0x80:
            return end  # ASCII: nothing is split
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end if back >= need else end - back
    return end  # only continuation bytes: invalid anyway, the decoder replaces them


def with_timeout_marker(stderr: str) -> str:
    return f"{stderr}\n{TIMEOUT_MARKER}" if stderr else TIMEOUT_MARKER
