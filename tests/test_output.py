"""Output: capped as it arrives, cut at a UTF-8 boundary, trimmed, marked when truncated."""

import pytest

from isol8 import Isol8
from isol8.output import CappedOutput, truncation_marker, utf8_boundary


def test_flood_is_capped_and_marked():
    limit = 64 * 1024
    with Isol8(max_output_size=limit) as eng:
        r = eng.execute(cmd="head -c 20000000 /dev/zero | tr '\\0' a; echo; echo done >&2")
    assert r.exit_code == 0 and r.truncated
    assert r.stdout == "a" * limit + truncation_marker(20_000_001, limit)
    assert r.stderr == "done"  # the other stream is unaffected


def test_stderr_flood_is_capped_too():
    with Isol8(max_output_size=1000) as eng:
        r = eng.execute("import sys; sys.stderr.write('e' * 50000)")
    assert r.truncated and r.stderr.startswith("e" * 1000 + "\n\n--- OUTPUT TRUNCATED (50000")


def test_at_the_limit_is_not_truncated():
    with Isol8(max_output_size=10) as eng:
        r = eng.execute("print('x' * 9)")  # 9 + newline = 10 bytes
    assert (r.truncated, r.stdout) == (False, "x" * 9)


def test_trailing_whitespace_is_trimmed_leading_kept(engine):
    r = engine.execute("print('  a  \\n\\n\\t ')")
    assert r.stdout == "  a"


def test_invalid_utf8_is_replaced(engine):
    r = engine.execute("import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe')")
    assert r.stdout == "ok\ufffd\ufffd"


def test_multibyte_cut_at_boundary():
    with Isol8(max_output_size=5) as eng:
        r = eng.execute("print('ééé')")  # 6 bytes + newline: the cut falls inside the third é
    assert r.stdout.startswith("éé\n\n--- OUTPUT TRUNCATED (7 bytes, limit: 5) ---")


@pytest.mark.parametrize("data, cut", [
    (b"abc", 3), (b"ab\xc3", 2), (b"ab\xc3\xa9", 4), (b"\xe2\x82", 0), (b"\xe2\x82\xac", 3),
    (b"a\xf0\x9f\x98", 1), (b"a\xf0\x9f\x98\x80", 5), (b"", 0),
])
def test_utf8_boundary(data, cut):
    assert utf8_boundary(data) == cut


def test_capped_output_never_holds_more_than_the_limit():
    sink = CappedOutput(100)
    for _ in range(1000):
        sink.feed(b"z" * 4096)
    assert len(sink._kept) == 100 and sink.total == 4096 * 1000
