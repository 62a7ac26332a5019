"""Secret masking on byte streams: every occurrence of a secret value becomes ``***``.

Output arrives in arbitrary chunks, so a secret can be split across two reads or written a
byte at a time (upstream masks each chunk alone, and leaks it). The masker holds back only
the bytes at the end of what it has seen that could still be the start of a secret, and
releases them as soon as they cannot; there is no timed flush that could emit half a secret.
It runs before the output cap, so a truncated output never ends in an unmasked fragment.

Masking stops a secret from being echoed verbatim; it does not stop encoded exfiltration
(base64, hex, one character per line): see the README's threat model.
"""

from __future__ import annotations

MASK = b"***"


class Masker:
    """Masks one stream. ``feed()`` returns what is safe to emit now; ``flush()`` the rest."""

    __slots__ = ("_secrets", "_pending")

    def __init__(self, secrets: list[bytes]) -> None:
        # Longest first: where one secret contains another, the whole of it is masked.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if not self._secrets:
            return data
        buffer = mask(self._pending + data, self._secrets)
        keep = _held_back(buffer, self._secrets)
        self._pending = buffer[len(buffer) - keep:] if keep else b""
        return buffer[:len(buffer) - keep]

    def flush(self) -> bytes:
        """At end of stream the held-back bytes are not a secret after all."""
        out, self._pending = self._pending, b""
        return out


def mask(data: bytes, secrets: list[bytes]) -> bytes:
    """Replace every occurrence of each secret (longest first) with the mask."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, MASK)
    return data


def _held_back(buffer: bytes, secrets: list[bytes]) -> int:
    """The length of the longest suffix of buffer that is a proper prefix of a secret."""
    longest = 0
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(buffer)), longest, -1):
            if buffer.endswith(secret[:size]):
                longest = size
                break
    return longest
