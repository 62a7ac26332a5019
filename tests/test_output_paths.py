"""output_paths: files read back after the run, inside the sandbox, as base64."""

import base64
import hashlib

import pytest

from isol8 import InvalidRequest, Isol8


def test_files_come_back_binary_safe_and_missing_ones_are_skipped(engine):
    r = engine.execute(
        "import os\n"
        "open('/sandbox/out.bin', 'wb').write(bytes(range(256)) * 3)\n"
        "os.makedirs('/tmp/d/e'); open('/tmp/d/e/r.txt', 'w').write('deep')\n"
        "open('/sandbox/empty', 'w').close()",
        output_paths=["/sandbox/out.bin", "/tmp/d/e/r.txt", "/sandbox/empty", "/sandbox/nope",
                      "/tmp/d"])
    assert r.exit_code == 0
    assert {k: base64.b64decode(v) for k, v in r.files.items()} == {
        "/sandbox/out.bin": bytes(range(256)) * 3, "/tmp/d/e/r.txt": b"deep",
        "/sandbox/empty": b""}
    assert r.to_dict()["files"] == r.files
    assert "files" not in engine.execute("print(1)").to_dict()


def test_a_large_file_round_trips(engine):
    r = engine.execute(cmd="head -c 10000000 /dev/urandom > /sandbox/big; sha256sum /sandbox/big",
                       output_paths=["/sandbox/big"])
    data = base64.b64decode(r.files["/sandbox/big"])
    assert len(data) == 10_000_000
    assert hashlib.sha256(data).hexdigest() == r.stdout.split()[0]


def test_paths_resolve_inside_the_sandbox_only(engine):
    # A symlink to a host-looking path, device files and FIFOs: what comes back is the
    # sandbox's own view, and only regular files.
    r = engine.execute(
        cmd="ln -s /etc/hostname /sandbox/link; ln -s /proc/1/root/etc/shadow /sandbox/sh; "
            "mkfifo /sandbox/fifo; cat /etc/hostname",
        output_paths=["/sandbox/link", "/sandbox/sh", "/sandbox/fifo", "/dev/zero",
                      "/etc/shadow", "/proc/self/environ"])
    assert r.exit_code == 0
    assert base64.b64decode(r.files["/sandbox/link"]).decode().strip() == r.stdout
    assert set(r.files) <= {"/sandbox/link", "/proc/self/environ"}


def test_files_are_collected_after_a_timeout_and_a_failure(engine):
    r = engine.execute("open('/sandbox/partial', 'w').write('so far'); import time; "
                       "time.sleep(10)", timeout_ms=500, output_paths=["/sandbox/partial"])
    assert r.exit_code == 137
    assert base64.b64decode(r.files["/sandbox/partial"]) == b"so far"
    r = engine.execute(cmd="echo x > /sandbox/f; exit 4", output_paths=["/sandbox/f"])
    assert r.exit_code == 4 and base64.b64decode(r.files["/sandbox/f"]) == b"x\n"


def test_output_files_are_not_masked():
    with Isol8(secrets={"KEY": "topsecret"}) as eng:
        r = eng.execute(cmd='echo "$KEY" > /sandbox/k; echo "$KEY"', output_paths=["/sandbox/k"])
    assert r.stdout == "***"
    assert base64.b64decode(r.files["/sandbox/k"]) == b"topsecret\n"  # upstream: unmasked


def test_persistent_mode_returns_files_too():
    with Isol8(mode="persistent") as eng:
        eng.execute(cmd="echo 1 > /sandbox/a")
        r = eng.execute(cmd="echo 2 >> /sandbox/a", output_paths=["/sandbox/a"])
    assert base64.b64decode(r.files["/sandbox/a"]) == b"1\n2\n"


@pytest.mark.parametrize("paths", ["/sandbox/a", ["relative"], [42], ["/sandbox/\0x"]])
def test_output_paths_must_be_absolute_paths(engine, paths):
    with pytest.raises(InvalidRequest, match="output_paths"):
        engine.execute("print(1)", output_paths=paths)
