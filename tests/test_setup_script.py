"""setup_script: bash before the code, in the same sandbox and under the same deadline."""

import time

import pytest

from conftest import watching_host
from isol8 import InvalidRequest, Isol8, SetupScriptFailed


def merged(events):
    """(phase, type, data) with consecutive chunks of one stream joined: how output is
    split into chunks is up to the writer and the pipe."""
    out = []
    for e in events:
        if out and out[-1][:2] == (e.phase, e.type) and e.type in ("stdout", "stderr"):
            out[-1] = (e.phase, e.type, out[-1][2] + e.data)
        else:
            out.append((e.phase, e.type, e.data))
    return out


def test_setup_sees_files_env_and_secrets_and_prepares_the_code():
    with Isol8(secrets={"TOKEN": "s3cr3t-value"}) as eng:
        r = eng.execute(
            "print(open('/sandbox/prepared').read().strip())",
            env={"GREETING": "hi"}, files={"/sandbox/in.txt": "from-files"},
            setup_script='set -e\n[ "$TOKEN" = s3cr3t-value ]\n'
                         'echo "$GREETING $(cat /sandbox/in.txt) $(id -u) $PWD" > /sandbox/prepared')
    assert r.exit_code == 0
    assert r.stdout == "hi from-files 1000 /sandbox"


def test_setup_output_is_not_in_the_result_but_streams_first_with_its_phase(engine):
    r = engine.execute("print('code')", setup_script="echo setup-out; echo setup-err >&2")
    assert (r.stdout, r.stderr) == ("code", "")
    events = merged(engine.execute_stream(
        "print('code')", setup_script="echo setup-out; echo setup-err >&2"))
    assert events == [("setup", "stdout", "setup-out\n"), ("setup", "stderr", "setup-err\n"),
                      ("setup", "exit", "0"), ("code", "stdout", "code\n"),
                      ("code", "exit", "0")]


def test_a_failing_setup_aborts_the_run_with_upstreams_error():
    with Isol8(secrets={"TOKEN": "s3cr3t-value"}) as eng:
        script = "echo partial; echo broke $TOKEN >&2; exit 3"
        with pytest.raises(SetupScriptFailed) as caught:
            eng.execute("print('code ran')", setup_script=script)
        assert caught.value.exit_code == 3
        assert caught.value.stdout == "partial"
        assert str(caught.value) == "Setup script failed (exit code 3): broke ***"
        events = merged(eng.execute_stream("print('code ran')", setup_script=script))
    assert events == [("setup", "stdout", "partial\n"), ("setup", "stderr", "broke ***\n"),
                      ("setup", "error", "Setup script failed (exit code 3)"),
                      ("setup", "exit", "3")]


def test_one_deadline_covers_setup_and_code(engine):
    started = time.monotonic()
    r = engine.execute("import time; time.sleep(0.7); print('late')", timeout_ms=1000,
                       setup_script="sleep 0.7")
    elapsed = time.monotonic() - started
    assert r.exit_code == 137 and "late" not in r.stdout
    assert "EXECUTION TIMED OUT" in r.stderr
    assert elapsed < 1.8  # two separate 1 s budgets would let the code finish at ~1.4 s


def test_a_setup_timeout_is_reported_as_upstream_and_leaves_nothing(engine):
    with watching_host("isol8-setup-sleeper"):
        with pytest.raises(SetupScriptFailed) as caught:
            engine.execute("print(1)", timeout_ms=500,
                           setup_script="exec -a isol8-setup-sleeper sleep 30")
    assert (caught.value.reason, caught.value.exit_code) == ("SETUP SCRIPT TIMED OUT", 137)
    events = merged(engine.execute_stream("print(1)", timeout_ms=300,
                                          setup_script="sleep 30"))
    assert events == [("setup", "error", "SETUP SCRIPT TIMED OUT"), ("setup", "exit", "137")]


def test_duration_covers_the_code_phase_only(engine):
    r = engine.execute("print(1)", setup_script="sleep 0.5")
    assert r.exit_code == 0 and r.duration_ms < 400


def test_setup_runs_in_the_persistent_sandbox_before_each_call():
    with Isol8(mode="persistent") as eng:
        eng.execute(cmd="true", setup_script="echo one >> /sandbox/log")
        r = eng.execute(cmd="cat /sandbox/log", setup_script="echo two >> /sandbox/log")
        assert r.stdout.splitlines() == ["one", "two"]
        with pytest.raises(SetupScriptFailed):
            eng.execute(cmd="echo never >> /sandbox/log", setup_script="false")
        assert eng.execute(cmd="cat /sandbox/log").stdout.splitlines() == ["one", "two"]


@pytest.mark.parametrize("script", [42, b"echo", "echo \0"])
def test_setup_script_must_be_text(engine, script):
    with pytest.raises(InvalidRequest, match="setup_script"):
        engine.execute("print(1)", setup_script=script)
