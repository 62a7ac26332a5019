"""Exit codes pass through; death by signal n gives 128+n."""

import signal

import pytest


@pytest.mark.parametrize("code, expected", [("exit 0", 0), ("exit 3", 3), ("exit 255", 255),
                                            ("kill -TERM $$", 143), ("kill -KILL $$", 137),
                                            ("kill -SEGV $$", 139)])
def test_bash_exit_codes(engine, code, expected):
    assert engine.execute(code, runtime="bash").exit_code == expected


def test_python_exception_gives_1_and_traceback(engine):
    r = engine.execute("raise ValueError('boom')")
    assert r.exit_code == 1
    assert 'File "/sandbox/main.py", line 1' in r.stderr
    assert r.stderr.endswith("ValueError: boom")


def test_python_sys_exit(engine):
    assert engine.execute("import sys; sys.exit(42)").exit_code == 42


def test_node_process_exit(engine):
    assert engine.execute("process.exit(7)", runtime="node").exit_code == 7


def test_node_syntax_error(engine):
    r = engine.execute("this is not javascript", runtime="node")
    assert r.exit_code == 1 and "SyntaxError" in r.stderr


def test_signal_state_is_pristine_whatever_the_supervisor_has(engine):
    # Python ignores SIGPIPE and SIGXFSZ, and SIG_IGN survives execve; a blocked signal would
    # survive too. Neither may reach user code: `yes | head` must die of SIGPIPE (141).
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        r = engine.execute(cmd="yes | head -1; echo ${PIPESTATUS[0]}; "
                               "grep -E '^Sig(Ign|Blk)' /proc/self/status")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    assert r.stdout.splitlines() == ["y", "141", "SigBlk:\t0000000000000000",
                                     "SigIgn:\t0000000000000000"]
