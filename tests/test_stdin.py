"""stdin: text, binary, large, and absent (immediate EOF)."""

import hashlib


def test_text_stdin(engine):
    r = engine.execute("import sys; print(sys.stdin.read()[::-1])", stdin="hello")
    assert r.stdout == "olleh"


def test_binary_stdin_round_trip(engine):
    data = bytes(range(256)) * 16
    r = engine.execute("import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read())"
                       ".hexdigest())", stdin=data)
    assert r.stdout == hashlib.sha256(data).hexdigest()


def test_ten_megabytes_of_stdin(engine):
    data = b"0123456789abcdef" * (10 << 16)
    r = engine.execute(cmd="wc -c", stdin=data)
    assert r.stdout == str(len(data))


def test_no_stdin_is_eof_not_a_hang(engine):
    r = engine.execute("import sys; print(repr(sys.stdin.read()))", timeout_ms=10_000)
    assert (r.exit_code, r.stdout) == (0, "''")


def test_stdin_reaches_node_and_bash(engine):
    assert engine.execute("read x; echo got:$x", runtime="bash", stdin="42\n").stdout == "got:42"
    r = engine.execute("process.stdin.on('data', d => console.log(String(d).trim() + '!'))",
                       runtime="node", stdin="hi")
    assert r.stdout == "hi!"
