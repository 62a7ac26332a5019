"""tmp_exec: /tmp is noexec by default (upstream's choice), and can be made executable for
the workloads that compile or install into the temp dir; /dev/shm stays noexec."""

import subprocess
import sys

import pytest

from isol8 import InvalidRequest, Isol8

from conftest import run_sh

SCRIPT = ("cp /usr/bin/true /tmp/t && /tmp/t && echo tmp-ok; cp /usr/bin/true /dev/shm/t; "
          "/dev/shm/t; echo shm=$?")


@pytest.mark.parametrize("option", [1, "false", None])
def test_tmp_exec_takes_only_a_boolean(option):
    with pytest.raises(InvalidRequest, match="tmp_exec"):
        Isol8(tmp_exec=option)


def test_tmp_exec_lets_programs_run_from_tmp():
    with Isol8() as engine:
        default = run_sh(engine, SCRIPT)
    with Isol8(tmp_exec=True) as engine:
        allowed = run_sh(engine, SCRIPT)
    assert default.stdout == "shm=126" and default.exit_code == 0
    assert allowed.stdout == "tmp-ok\nshm=126"  # /dev/shm stays noexec


def test_cli_tmp_exec():
    """A binary compiled into /tmp, as a C test fixture would: 126 by default, runs with
    --tmp-exec."""
    cmd = "printf 'int main(void){return 7;}' > /tmp/m.c && cc -o /tmp/m /tmp/m.c && /tmp/m"
    base = [sys.executable, "-m", "isol8", "exec", "--no-stream", "--cmd", cmd]
    assert subprocess.run(base, capture_output=True).returncode == 126
    assert subprocess.run(base + ["--tmp-exec"], capture_output=True).returncode == 7
