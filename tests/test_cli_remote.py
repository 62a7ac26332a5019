"""`isol8 exec --host URL --key KEY`: the same flags and the same output as a local run, from
a real `isol8 serve`; `isol8 session list` and `isol8 session stop ID`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
pytest.importorskip("httpx2", reason="the client extra (isol8[client]) is not installed")

from isol8.client import RemoteIsol8  # noqa: E402
from test_server import KEY, Server, running  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running() as srv:
        yield srv


def isol8(*args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ISOL8_API_KEY"}
    return subprocess.run([sys.executable, "-m", "isol8", *args], capture_output=True,
                          text=True, timeout=90, env={**environ, **(env or {})}, cwd=cwd)


def both(server: Server, *args: str, cwd: Path | None = None,
         ) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The same command run locally and on the server."""
    return (isol8("exec", *args, cwd=cwd),
            isol8("exec", "--host", server.url, "--key", KEY, *args, cwd=cwd))


def outcome(p: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return p.returncode, p.stdout, p.stderr


PROGRAM = ("import sys, time\nprint('out', flush=True)\ntime.sleep(0.1)\n"
           "print('err', file=sys.stderr)\nsys.exit(3)")


@pytest.mark.parametrize("flags", [[], ["--no-stream"], ["--persistent"],
                                   ["--persistent", "--no-stream"]])
def test_remote_output_equals_local_output(server, flags):
    local, remote = both(server, *flags, "-e", PROGRAM)
    assert outcome(remote) == outcome(local) == (3, "out\n", "err\n")


def test_json_is_the_same_wire_form(server):
    local, remote = both(server, "--json", "-e", PROGRAM)
    assert (local.returncode, remote.returncode) == (3, 3)
    local_wire, remote_wire = json.loads(local.stdout), json.loads(remote.stdout)
    assert set(remote_wire) == set(local_wire)
    assert set(remote_wire["resourceUsage"]) == set(local_wire["resourceUsage"])
    for key in ("stdout", "stderr", "exitCode", "truncated", "runtime"):
        assert remote_wire[key] == local_wire[key], key


THREADS = """\
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
        n += 1
except RuntimeError:
    print(n)
"""


@pytest.mark.parametrize("args", [
    ["--cmd", 'read x; echo "$x:$NAME:$TOKEN"', "--env", "NAME=bob", "--stdin", "hi",
     "--secret", "TOKEN=s3cr3t"],
    ["--timeout", "400", "--cmd", "echo before; sleep 20"],
    ["--max-output", "10", "-e", "print('x' * 100)"],
    ["-r", "bash", "-e", "echo from bash; exit 4"],
    ["--setup", "echo one", "--setup", "echo two >&2; exit 6", "-e", "print('never')"],
    ["--pids-limit", "8", "--cpu", "0.5", "-e", THREADS],
    # holds the memory: the watchdog (rootless, best effort) may miss a hog that ends at once
    ["--memory", "64m", "-e", "import time; x = bytearray(256 << 20); time.sleep(9); "
                              "print('never')"],
    ["--workdir", "sub", "--cmd", "pwd"],
    ["-e", "print(1", "--no-stream"],
])
def test_flags_reach_the_server_with_the_same_output(server, args):
    local, remote = both(server, *args)
    assert outcome(remote) == outcome(local)


def test_file_argument_files_dir_and_out(server, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data.txt").write_text("from the project")
    (tmp_path / "main.py").write_text("print(open('/sandbox/data.txt').read())")
    local, remote = both(server, "--files", "project", "main.py", cwd=tmp_path)
    assert outcome(remote) == outcome(local) == (0, "from the project\n", "")
    local, remote = both(server, "--out", "out.txt", "-e", "print('to a file')", cwd=tmp_path)
    assert outcome(remote) == outcome(local) == (0, "", "")
    assert (tmp_path / "out.txt").read_text() == "to a file"


def test_a_refused_option_is_a_one_line_error(server):
    p = isol8("exec", "--host", server.url, "--key", KEY, "--net", "host", "-e", "print(1)")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("isol8: options.network:") and p.stderr.count("\n") == 1


def test_key_from_the_environment_and_key_errors(server):
    p = isol8("exec", "--host", server.url, "-e", "print(1)", env={"ISOL8_API_KEY": KEY})
    assert outcome(p) == (0, "1\n", "")
    p = isol8("exec", "--host", server.url, "-e", "print(1)")
    assert p.returncode == 2 and "--host needs an API key: --key or ISOL8_API_KEY" in p.stderr
    p = isol8("exec", "--host", server.url, "--key", KEY + "x", "-e", "print(1)")
    assert outcome(p) == (1, "", "isol8: Invalid API key\n")


def test_an_unreachable_server_is_a_one_line_error():
    p = isol8("exec", "--host", "http://127.0.0.1:9", "--key", KEY, "-e", "print(1)")
    assert p.returncode == 1 and p.stderr.startswith("isol8: http://127.0.0.1:9/health: ")
    assert p.stderr.count("\n") == 1


def test_session_list_and_stop(server):
    with RemoteIsol8(host=server.url, api_key=KEY, session_id="cli-listed") as client:
        client.execute("print(1)")
        listed = isol8("session", "list", "--host", server.url, "--key", KEY)
        assert listed.returncode == 0, listed.stderr
        lines = [line.split("\t") for line in listed.stdout.splitlines()]
        assert ["cli-listed", "idle"] in [line[:2] for line in lines]
        assert all(line[2].endswith("Z") for line in lines)
        stopped = isol8("session", "stop", "cli-listed", "--host", server.url,
                        env={"ISOL8_API_KEY": KEY})
        assert outcome(stopped) == (0, "", "")
        assert "cli-listed" not in {s.id for s in client.list_sessions()}
    assert isol8("session", "stop", "never-was", "--host", server.url, "--key",
                 KEY).returncode == 0  # idempotent, as upstream
    p = isol8("session", "list", "--key", KEY)
    assert p.returncode == 2 and "--host" in p.stderr


def test_persistent_remote_run_leaves_no_session(server):
    with RemoteIsol8(host=server.url, api_key=KEY) as client:
        before = {s.id for s in client.list_sessions()}
        assert isol8("exec", "--host", server.url, "--key", KEY, "--persistent",
                     "-e", "print(1)").stdout == "1\n"
        assert {s.id for s in client.list_sessions()} == before
