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
