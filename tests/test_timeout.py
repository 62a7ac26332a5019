"""Timeouts kill the whole run, return 137 and append upstream's marker."""

import time

from isol8 import Isol8

from conftest import host_processes_matching


def test_timeout_kills_a_daemonizing_tree_and_reports_137(engine):
    marker = "2718.28183"
    started = time.monotonic()
    r = engine.execute(cmd=f"echo before; (setsid sleep {marker} &); "
                           f"(sleep {marker} & disown); sleep {marker}", timeout_ms=700)
    elapsed = time.monotonic() - started
    assert r.exit_code == 137
    assert r.stdout == "before"  # output written before the deadline is kept
    assert r.stderr == "--- EXECUTION TIMED OUT ---"
    assert 0.7 <= elapsed < 3.0  # generous: the benchmark measures the real bound
    assert host_processes_matching(marker) == []


def test_timeout_marker_follows_existing_stderr(engine):
    r = engine.execute("import sys, time; print('oops', file=sys.stderr); time.sleep(60)",
                       timeout_ms=800)
    assert (r.exit_code, r.stderr) == (137, "oops\n--- EXECUTION TIMED OUT ---")


def test_engine_default_timeout_applies():
    with Isol8(timeout_ms=500) as eng:
        assert eng.execute(cmd="sleep 30").exit_code == 137


def test_a_fast_run_is_not_marked(engine):
    r = engine.execute("print('quick')", timeout_ms=20_000)
    assert r.exit_code == 0 and "TIMED OUT" not in r.stderr


def test_execute_returns_when_the_main_process_exits(engine):
    # A background child holding stdout open must not hold the call open.
    started = time.monotonic()
    r = engine.execute(cmd="sleep 3141.5926 & echo main-done", timeout_ms=20_000)
    assert (r.exit_code, r.stdout) == (0, "main-done")
    assert time.monotonic() - started < 5
    assert host_processes_matching("3141.5926") == []
