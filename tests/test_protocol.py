"""The helper wire format: encoding round-trips, and events are parsed as untrusted input."""

import json
import random
import struct

import pytest

from isol8 import protocol
from isol8.protocol import ProtocolError, parse_event


def records(message: bytes):
    off, out = 1, []
    while off < len(message):
        tag, zero, size = struct.unpack_from("<HHI", message, off)
        assert zero == 0
        out.append((tag, message[off + 8: off + 8 + size]))
        off += 8 + size
    assert off == len(message)
    return out


def test_exec_request_layout():
    msg = protocol.encode_exec(7, ["/usr/bin/python3", "/sandbox/main.py"], {"A": "1"},
                               "/sandbox", ["/sandbox/main.py"])
    assert msg[:1] == b"X"
    assert records(msg) == [(20, struct.pack("<I", 7)), (23, b"/sandbox\0"),
                            (21, b"/usr/bin/python3\0"), (21, b"/sandbox/main.py\0"),
                            (22, b"A=1\0"), (24, b"/sandbox/main.py\0")]


def test_nul_bytes_and_relative_programs_are_refused():
    with pytest.raises(ProtocolError):
        protocol.encode_exec(1, ["/bin/sh", "a\0b"], {}, "/", [])
    with pytest.raises(ProtocolError):
        protocol.encode_exec(1, ["sh"], {}, "/", [])
    with pytest.raises(ProtocolError):
        protocol.encode_exec(1, ["/bin/sh"], {}, "/", ["/sandbox/f"] * 65)


def test_config_carries_every_field():
    cfg = protocol.HelperConfig(hostname="h", new_netns=True, seccomp_filters=(b"\0" * 8,),
                                mounts=(protocol.Tmpfs("/t", 4096, 1024, 0o1777, True),),
                                memory_watch=1 << 20, watch_paths=("/t",))
    tags = dict(records(protocol.config_message(protocol.encode_config_body(cfg), host_uid=1001,
                                                host_gid=1002, rlimits=((4, 0, 0),),
                                                cgroup_kinds=b"DP")))
    assert tags[6] == struct.pack("<IQQ", 4, 0, 0) and tags[8] == b"DP"
    assert tags[9] == struct.pack("<Q", 1 << 20) and tags[19] == b"/t\0"
    assert tags[1] == struct.pack("<I", 1001) and tags[2] == struct.pack("<I", 1002)
    assert tags[4] == b"\1" and tags[5] == b"\0" * 8 and tags[7] == b"/tmp\0"
    assert tags[11] == struct.pack("<IIQQ", 0o1777, 1, 4096, 1024) + b"/t\0"


@pytest.mark.parametrize("event", [
    {"event": "started", "pid": 12},
    {"event": "spawned", "id": 1, "pid": 2, "t": 3},
    {"event": "exit", "id": 1, "code": 0},
    {"event": "exit", "id": 1, "signal": 9},
    {"event": "error", "step": "rootfs", "syscall": "mount", "errno": 1, "path": "/x"},
])
def test_valid_events(event):
    assert parse_event(json.dumps(event).encode()) == event


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[]", b'"x"', b'{"event":"nope"}', b'{"event":"started"}',
    b'{"event":"started","pid":"12"}', b'{"event":"started","pid":12,"extra":1}',
    b'{"event":"exit","id":1}', b'{"event":"exit","id":1,"code":0,"signal":9}',
    b'{"event":"started","pid":true}', b'{"event":"started","pid":1.5}',
    b'{"event":"started","pid":1}' + b" " * 5000,
])
def test_malformed_events_are_rejected(raw):
    with pytest.raises(ProtocolError):
        parse_event(raw)


def test_random_bytes_never_crash_the_parser():
    rng = random.Random(1234)
    valid = json.dumps({"event": "exit", "id": 1, "code": 0}).encode()
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            event = parse_event(bytes(data))
        except ProtocolError:
            continue
        assert event["event"] in ("exit", "started", "ready", "spawned", "error")


def test_final_flag_is_sent_only_when_asked():
    plain = protocol.encode_exec(1, ["/bin/true"], {}, "/", [])
    final = protocol.encode_exec(1, ["/bin/true"], {}, "/", [], final=True)
    assert (25, b"\1") not in records(plain) and records(final)[-1] == (25, b"\1")


def test_read_request_layout():
    msg = protocol.encode_read(9, ("/sandbox/a", "/tmp/b"), 1 << 26)
    assert msg[:1] == b"R"
    assert records(msg) == [(20, struct.pack("<I", 9)), (27, struct.pack("<Q", 1 << 26)),
                            (24, b"/sandbox/a\0"), (24, b"/tmp/b\0")]
    with pytest.raises(ProtocolError):
        protocol.encode_read(1, ("relative",), 1)
    with pytest.raises(ProtocolError):
        protocol.encode_read(1, ("/a",) * (protocol.MAX_READ_PATHS + 1), 1)


def test_exec_requests_over_the_inits_counts_are_refused():
    with pytest.raises(ProtocolError, match="4096"):
        protocol.encode_exec(1, ["/bin/true"], {f"V{i}": "" for i in range(4097)}, "/", [])


def chunk(index: int, data: bytes = b"") -> bytes:
    return struct.pack("<II", index, len(data)) + data


PATHS = ("/a", "/b", "/c")


def stream(data: bytes, limit: int = 1 << 20, step: int = 0):
    decoder = protocol.FileStream(PATHS, limit)
    pieces = [data[i:i + step] for i in range(0, len(data), step)] if step else [data]
    for piece in pieces:
        assert decoder.feed(piece) == b""
    assert decoder.end() == b""
    return decoder


@pytest.mark.parametrize("step", [0, 1, 3, 4096])
def test_a_read_stream_in_any_pieces(step):
    # /b starts but never ends (the reader gave it up): left out
    data = chunk(0, b"ab") + chunk(0, b"\xff\0") + chunk(0) + chunk(1, b"x") + chunk(2)
    decoder = stream(data, step=step)
    assert decoder.files == {"/a": b"ab\xff\0", "/c": b""} and not decoder.malformed


@pytest.mark.parametrize("data, kept", [
    (chunk(3, b"x") + chunk(3), {}),  # no such path: nothing is read from the stream's names
    (chunk(1) + chunk(1, b"again") + chunk(1), {"/b": b""}),  # each file once
    (chunk(2) + chunk(0, b"back") + chunk(0), {"/c": b""}),  # in order
    (struct.pack("<II", 0, protocol.READ_CHUNK + 1), {}),  # a chunk over the bound
    (chunk(0, b"a" * 600) + chunk(0) + chunk(1, b"b" * 500), {"/a": b"a" * 600}),  # limit
    (chunk(0, b"half") + chunk(1, b"b") + chunk(1), {"/b": b"b"}),  # unended: left out
    (chunk(0, b"cut"), {}),
])
def test_a_hostile_read_stream_keeps_only_complete_requested_files(data, kept):
    assert stream(data, limit=1000).files == kept


def test_random_read_streams_never_crash_the_parser():
    rng = random.Random(99)
    valid = chunk(0, b"abc") + chunk(0) + chunk(1, b"d") + chunk(1)
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        decoder = stream(bytes(data), limit=64, step=rng.randint(1, 8))
        assert set(decoder.files) <= {"/a", "/b"}
        assert sum(map(len, decoder.files.values())) <= 64
