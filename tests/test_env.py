"""The environment holds only what isol8 sets: nothing from the host leaks."""

import json
import os

import pytest

from isol8 import InvalidRequest

BASE = {"PATH", "HOME", "USER", "LANG", "TMPDIR", "PYTHONUNBUFFERED", "PYTHONUSERBASE",
        "NPM_CONFIG_PREFIX", "NODE_PATH"}
DUMP = "import os, json; print(json.dumps(dict(os.environ)))"


def test_only_the_base_environment(engine, monkeypatch):
    monkeypatch.setenv("ISOL8_HOST_SECRET", "must-not-leak")
    env = json.loads(engine.execute(DUMP).stdout)
    assert set(env) == BASE
    assert env["HOME"] == "/sandbox" and env["USER"] == "sandbox" and env["TMPDIR"] == "/tmp"
    assert "must-not-leak" not in json.dumps(env)


def test_request_env_is_added_and_may_override(engine):
    env = json.loads(engine.execute(DUMP, env={"FOO": "bar baz", "LANG": "C"}).stdout)
    assert env["FOO"] == "bar baz" and env["LANG"] == "C"


def test_env_reaches_cmd(engine):
    assert engine.execute(cmd='echo "$GREETING"', env={"GREETING": "hi"}).stdout == "hi"


@pytest.mark.parametrize("env", [{"": "x"}, {"A=B": "x"}, {"A": "x\0y"}, {"A": 1}])
def test_invalid_env_is_rejected_before_running(engine, env):
    with pytest.raises(InvalidRequest, match="env"):
        engine.execute("print(1)", env=env)


def test_no_host_file_descriptors_leak_in(engine):
    fd = os.open("/dev/null", os.O_RDONLY)  # inheritable=False by default; still must not pass
    os.set_inheritable(fd, True)
    try:
        r = engine.execute("import os; print(sorted(os.listdir('/proc/self/fd')))")
    finally:
        os.close(fd)
    assert r.stdout == "['0', '1', '2', '3']"  # stdio plus listdir's own directory fd
