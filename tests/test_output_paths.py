"""output_paths: files read back after the run, inside the sandbox, as base64."""

import base64
import hashlib
import time

import pytest

from isol8 import InvalidRequest, Isol8
from isol8.runtimes import BASH
from isol8.sandbox import RunSpec, finish
from isol8.session import Session
from isol8.staged import COLLECT_LIMIT, Stages, run_stages


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
    # A symlink to a host-looking path, device files, FIFOs, a file its owner cannot read:
    # what comes back is the sandbox's own view, and only regular files the user can read.
    r = engine.execute(
        cmd="ln -s /etc/hostname /sandbox/link; ln -s /proc/1/root/etc/shadow /sandbox/sh; "
            "mkfifo /sandbox/fifo; echo x > /sandbox/closed; chmod 0 /sandbox/closed; "
            "cat /etc/hostname",
        output_paths=["/sandbox/link", "/sandbox/sh", "/sandbox/fifo", "/dev/zero",
                      "/etc/shadow", "/sandbox/closed", "/proc/self/environ",
                      "/proc/self/maps"])
    assert r.exit_code == 0
    assert base64.b64decode(r.files["/sandbox/link"]).decode().strip() == r.stdout
    # Files of /proc would describe the reader, a fork of the sandbox's init.
    assert set(r.files) == {"/sandbox/link"}


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


def test_files_over_the_total_are_left_out_and_later_ones_still_come_back(engine):
    big, bigger = COLLECT_LIMIT * 5 // 8, COLLECT_LIMIT * 4 // 8
    r = engine.execute(cmd=f"head -c {big} /dev/urandom > /sandbox/a; "
                           f"head -c {bigger} /dev/zero > /sandbox/b; echo c > /sandbox/c",
                       output_paths=["/sandbox/a", "/sandbox/b", "/sandbox/c"])
    assert sorted(r.files) == ["/sandbox/a", "/sandbox/c"]
    assert len(base64.b64decode(r.files["/sandbox/a"])) == big


# A background process of the run writes into fd 1 of every process it can open through
# /proc, as long as the call lasts. Its payloads: an entry of the old collector's format
# whose four NULs keep that format aligned wherever it lands, and bytes no base64 has.
INJECT = """
import os, sys, time
payload, me, end = eval(sys.argv[1]), os.getpid(), time.time() + 5
while time.time() < end:
    for pid in os.listdir('/proc'):
        if pid.isdigit() and int(pid) not in (1, me):
            try:
                fd = os.open(f'/proc/{pid}/fd/1', os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.write(fd, payload)
                open('/sandbox/.wrote', 'w').close()
            except OSError:
                pass
            os.close(fd)
"""
PAYLOADS = [b"\0/etc/shadow\0cm9vdA==\0x\0", b"\xff\0\xff\0"]


@pytest.mark.parametrize("mode", ["ephemeral", "persistent"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["entry", "not-base64"])
def test_a_background_process_cannot_write_into_the_collection(mode, payload):
    with Isol8(mode=mode) as eng:
        r = eng.execute(cmd='head -c 30000000 /dev/urandom > /sandbox/big; '
                            'sha256sum /sandbox/big >&2; python3 -c "$P" "$X" & '
                            # the run ends only once the injector has written (a loaded
                            # machine can take longer than any fixed sleep to start it)
                            'i=0; until [ -e /sandbox/.wrote ] || [ $i -ge 1000 ]; do '
                            'sleep 0.01; i=$((i+1)); done',
                        env={"P": INJECT, "X": repr(payload)}, output_paths=["/sandbox/big"])
    assert payload.decode(errors="replace") in r.stdout  # it did write, into the run's stdout
    assert list(r.files) == ["/sandbox/big"]
    data = base64.b64decode(r.files["/sandbox/big"])
    assert hashlib.sha256(data).hexdigest() == r.stderr.split()[0]


# Once its run is over (its parent, then the run's leader, gone), a background process
# stops every process it can signal, again and again.
STOP = """
import os, signal, time
me, end = os.getpid(), time.time() + 12
while os.getppid() != 1 and time.time() < end:
    time.sleep(0.001)
while time.time() < end:
    for pid in os.listdir('/proc'):
        if pid.isdigit() and int(pid) not in (1, me):
            try:
                os.kill(int(pid), signal.SIGSTOP)
            except OSError:
                pass
"""


@pytest.mark.parametrize("mode", ["ephemeral", "persistent"])
def test_a_stopped_reader_costs_at_most_a_short_grace(mode):
    with Isol8(mode=mode) as eng:
        started = time.monotonic()
        r = eng.execute(cmd='python3 -c "$P" & echo x > /sandbox/a; sleep 0.3',
                        env={"P": STOP}, output_paths=["/sandbox/a"], timeout_ms=2000)
        elapsed = time.monotonic() - started
    assert r.exit_code == 0
    assert r.files in ({}, {"/sandbox/a": "eAo="})  # the reader may win the race
    assert elapsed < 2 + 2 + 3.5, elapsed  # the timeout, the collection's grace, slack


def test_a_sandbox_that_ends_with_its_run_is_emptied_before_the_files_are_read(engine):
    # The same stopper in a session that is not persistent (the engine's staged ephemeral
    # runs): killed with everything else of the user's before the reader starts.
    host, cgroup, config = engine._claim(5000)
    session = Session(config, host, cgroup, None, persistent=False)
    try:
        spec = RunSpec([BASH, "-c", 'python3 -c "$P" & echo x > /sandbox/a; sleep 0.3'],
                       {"PATH": "/usr/bin:/bin", "P": STOP}, "/sandbox", b"", [])
        staged = finish(run_stages(session, Stages(spec, output_paths=("/sandbox/a",)),
                                   deadline=time.monotonic() + 5, max_output=1 << 16,
                                   owner=host.owner, secrets=[], cancel_fd=-1))
    finally:
        session.close()
    assert staged.main.exit_code == 0
    assert staged.files == {"/sandbox/a": "eAo="}
