"""The command line: `python -m isol8 exec` as a person at a shell uses it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import host_processes_matching


def isol8(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isol8", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_eval_python():
    p = isol8("exec", "-r", "python", "-e", "print(2**8)")
    assert (p.returncode, p.stdout, p.stderr) == (0, "256\n", "")


def test_run_alias_and_default_runtime():
    assert isol8("run", "-e", "print('py')").stdout == "py\n"


def test_exit_code_and_stderr_pass_through():
    p = isol8("exec", "-e", "import sys; print('bad', file=sys.stderr); sys.exit(9)")
    assert (p.returncode, p.stderr) == (9, "bad\n")


def test_file_runtime_detected_from_extension(tmp_path):
    script = tmp_path / "hello.mjs"
    script.write_text("console.log(['a', 'b'].join('-'))")
    assert isol8("exec", str(script)).stdout == "a-b\n"


def test_cmd_env_and_stdin():
    p = isol8("exec", "--cmd", 'read x; echo "$x:$NAME"', "--env", "NAME=bob", "--stdin", "hi")
    assert p.stdout == "hi:bob\n"


def test_json_is_the_wire_form():
    p = isol8("exec", "--json", "-e", "print(1)")
    wire = json.loads(p.stdout)
    assert wire["stdout"] == "1" and wire["exitCode"] == 0 and "durationMs" in wire


def test_timeout_flag():
    p = isol8("exec", "--timeout", "300", "--cmd", "sleep 20")
    assert p.returncode == 137 and "--- EXECUTION TIMED OUT ---" in p.stderr


def test_max_output_flag():
    p = isol8("exec", "--max-output", "10", "--json", "-e", "print('x' * 100)")
    assert json.loads(p.stdout)["truncated"] is True


@pytest.mark.parametrize("args, message", [
    (("exec",), "exactly one of FILE"),
    (("exec", "-e", "1", "--cmd", "true"), "exactly one of FILE"),
    (("exec", "--env", "NOEQUALS", "-e", "1"), "KEY=VALUE"),
    (("exec", "/nonexistent/x.py"), "cannot read"),
])
def test_usage_errors(args, message):
    p = isol8(*args)
    assert p.returncode == 2 and message in p.stderr


def test_library_errors_are_one_line_not_a_traceback():
    p = isol8("exec", "--sandbox-size", "huge", "-e", "1")
    assert p.returncode == 1
    assert p.stderr.startswith("isol8: sandbox_size") and "Traceback" not in p.stderr


def test_size_flags_reach_the_mounts():
    p = isol8("exec", "--sandbox-size", "16m", "--tmp-size", "8m", "--cmd",
              "df -B1 --output=size /sandbox /tmp | tail -n +2")
    assert [int(x) for x in p.stdout.split()] == [16 << 20, 8 << 20]


def test_output_streams_by_default_and_no_stream_buffers():
    proc = subprocess.Popen([sys.executable, "-m", "isol8", "exec", "--cmd",
                             "echo early; sleep 2; echo late"], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    assert proc.stdout.readline() == "early\n"
    assert time.monotonic() - started < 1.8  # printed before the process ended
    assert proc.stdout.read() == "late\n" and proc.wait(timeout=30) == 0
    p = isol8("exec", "--no-stream", "--cmd", "printf 'a\\n\\n\\n'")
    assert p.stdout == "a\n"  # buffered: trimmed as upstream, then one newline


def test_files_dir_workdir_and_out(tmp_path):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("print('from the project')")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref")
    out = tmp_path / "out.txt"
    p = isol8("exec", "--files", str(project), "--workdir", "src", "--out", str(out), "--cmd",
              "pwd; find /sandbox -type f | sort; python3 app.py")
    assert p.returncode == 0 and p.stdout == ""
    assert out.read_text() == "/sandbox/src\n/sandbox/src/app.py\nfrom the project"


def test_files_must_be_a_directory(tmp_path):
    p = isol8("exec", "--files", str(tmp_path / "missing"), "--cmd", "true")
    assert p.returncode == 2 and "is not a directory" in p.stderr


@pytest.fixture
def mount_src():
    """A host tree the sandbox can reach in both modes (as root pytest's tmp_path is not
    searchable by the sandbox's unprivileged host uid)."""
    path = Path(tempfile.mkdtemp(prefix="isol8-cli-", dir="/var/tmp"))
    try:
        (path / "in").mkdir()
        (path / "in" / "data.txt").write_text("from the host\n")
        (path / "out").mkdir()
        path.chmod(0o755)
        (path / "in").chmod(0o755)
        (path / "out").chmod(0o777)
        (path / "in" / "data.txt").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_mount_flag_read_only_by_default_and_rw(mount_src):
    p = isol8("exec", "--mount", f"{mount_src / 'in'}:/sandbox/in",
              "--mount", f"{mount_src / 'out'}:/mnt/out:rw", "--cmd",
              "cat /sandbox/in/data.txt; echo result > /mnt/out/r.txt; touch /sandbox/in/x")
    assert p.stdout == "from the host\n"
    assert p.returncode == 1 and "Read-only file system" in p.stderr
    assert (mount_src / "out" / "r.txt").read_text() == "result\n"
    assert sorted(os.listdir(mount_src / "in")) == ["data.txt"]


def test_mount_source_is_relative_to_the_current_directory(mount_src):
    p = subprocess.run([sys.executable, "-m", "isol8", "exec", "--mount", "in:/sandbox/in:ro",
                        "--cmd", "cat /sandbox/in/data.txt"], cwd=mount_src,
                       capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, "from the host\n"), p.stderr


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "expected SRC:DST[:ro|rw]"),
    (":/sandbox/x", "expected SRC:DST[:ro|rw]"),
    ("/var/tmp:", "expected SRC:DST[:ro|rw]"),
    ("/a:/sandbox/b:/sandbox/c:ro", "expected SRC:DST[:ro|rw]"),
    ("/var/tmp:/sandbox/x:rx", "the mode must be ro or rw"),
])
def test_bad_mount_syntax_is_a_usage_error(spec, message):
    p = isol8("exec", "--mount", spec, "--cmd", "true")
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_bad_mount_paths_are_one_line_errors(mount_src):
    p = isol8("exec", "--mount", f"{mount_src}:/etc/x", "--cmd", "true")
    assert p.returncode == 1 and p.stderr.startswith("isol8: mounts[0].target"), p.stderr
    p = isol8("exec", "--mount", f"{mount_src}/missing:/sandbox/x", "--cmd", "true")
    assert p.returncode == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_persistent_flag_runs_in_a_session_and_stops_it(extra):
    marker = "31415"
    p = isol8("exec", "--persistent", *extra, "--cmd",
              f"sleep {marker} & echo $PPID; echo started")
    out = json.loads(p.stdout)["stdout"] + "\n" if extra else p.stdout
    assert p.returncode == 0, p.stderr
    ppid, started = out.split()
    # a persistent run starts under its own subreaper leader, not directly under the init
    assert started == "started" and ppid != "1"
    assert host_processes_matching(f"sleep {marker}") == []  # stop() ended the session
    p = isol8("exec", "--persistent", "-e", "import sys; print('py'); sys.exit(3)")
    assert (p.returncode, p.stdout) == (3, "py\n")


def test_setup_inline_repeated_and_from_a_file(tmp_path):
    script = tmp_path / "setup.sh"
    script.write_text("echo from-file > /sandbox/b\n")
    p = isol8("exec", "--setup", "echo one > /sandbox/a", "--setup", str(script),
              "-e", "print(open('/sandbox/a').read().strip(), open('/sandbox/b').read().strip())")
    assert (p.returncode, p.stdout) == (0, "one from-file\n"), p.stderr


def test_repeated_setup_runs_each_value_as_its_own_script_in_order():
    # Own processes: the first's cd and shell variable do not reach the second.
    p = isol8("exec", "--setup", "cd /tmp; X=1; echo first; echo first >> /sandbox/log",
              "--setup", 'echo "second pwd=$PWD X=${X:-unset}"; echo second >> /sandbox/log',
              "--cmd", "cat /sandbox/log")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "first\nsecond pwd=/sandbox X=unset\nfirst\nsecond\n"


def test_a_failing_setup_value_stops_the_run_with_its_exit_code(tmp_path):
    second = tmp_path / "second.sh"
    second.write_text("echo second ran > /sandbox/second\n")
    # the first value's last command fails, as a failed `pip install` would: no `exit`
    p = isol8("exec", "--setup", "echo first failed >&2; (exit 3)", "--setup",
              str(second), "--cmd", "echo code ran; cat /sandbox/second")
    assert p.returncode == 3, p.stderr
    assert "code ran" not in p.stdout and "second ran" not in p.stdout
    assert "first failed" in p.stderr and "isol8: --setup 1 of 2 failed (exit code 3)" in p.stderr
    assert "Setup script failed (exit code 3)" in p.stderr
    # a failing command in the middle of a value is that script's business, as in bash:
    # only its last status counts, and the run goes on
    p = isol8("exec", "--setup", "false; true", "--setup", "exit 0", "-e", "print('ran')")
    assert (p.returncode, p.stdout) == (0, "ran\n"), p.stderr


def test_setup_scripts_are_data_not_shell_syntax_of_the_runner():
    tricky = "cat <<'EOF'\n$HOME `x` ISOL8_SETUP_1\nEOF\n"
    p = isol8("exec", "--setup", tricky, "--setup", """echo "a'b" '$X'""", "--cmd", "true")
    assert (p.returncode, p.stdout) == (0, "$HOME `x` ISOL8_SETUP_1\na'b $X\n"), p.stderr


@pytest.mark.parametrize("mode", [[], ["--no-stream"]])
def test_a_failing_setup_reports_it_and_exits_with_its_code(mode):
    p = isol8("exec", *mode, "--setup", "echo bad >&2; exit 5", "-e", "print('code ran')")
    assert p.returncode == 5
    assert "Setup script failed (exit code 5)" in p.stderr and "bad" in p.stderr
    assert "code ran" not in p.stdout


@pytest.mark.parametrize("mode", [[], ["--no-stream"], ["--json"]])
def test_a_limit_reached_is_named_with_the_flag_that_raises_it(mode):
    p = subprocess.run([sys.executable, "-m", "isol8", "exec", "--max-output", "10",
                        "--cmd", "seq 1000", *mode], capture_output=True, text=True)
    line = "isol8: limit reached: output (raise with --max-output)"
    if mode == ["--json"]:  # the wire form says it: limitsReached
        assert line not in p.stderr
        assert json.loads(p.stdout)["resourceUsage"]["limitsReached"] == ["output"]
    else:
        assert p.returncode == 0 and line in p.stderr.splitlines(), p.stderr


# upstream's code-URL flags: the URL each builds, and the usage errors (the fetch itself is
# isol8.remote_code's, tested in test_code_url.py)
@pytest.mark.parametrize("flags, url", [
    (("--github", "octo/repo/main/src/hello world.py"),
     "https://raw.githubusercontent.com/octo/repo/main/src/hello%20world.py"),
    (("--gist", "abc123/run.py"), "https://gist.githubusercontent.com/abc123/raw/run.py"),
    (("--url", "https://example.test/x.py"), "https://example.test/x.py"),
])
def test_code_url_flags_build_the_url(flags: tuple[str, str], url: str) -> None:
    from isol8.cli import _code_url, build_parser

    parser = build_parser()
    args = parser.parse_args(["exec", *flags, "--hash", "a" * 64])
    assert _code_url(args, parser) == url


@pytest.mark.parametrize("args, message", [
    (("exec", "--github", "octo/repo/main"), "--github: expected OWNER/REPO/REF/PATH"),
    (("exec", "--gist", "abc/def/x.py"), "--gist: expected ID/FILE"),
    (("exec", "--url", "https://a.test/x.py", "--gist", "a/b"), "give one of --url"),
    (("exec", "--url", "https://a.test/x.py", "--hash", "abc"), "--hash: expected 64"),
    (("exec", "-e", "1", "--hash", "a" * 64), "--hash and --allow-insecure-code-url need"),
    (("exec", "--url", "https://a.test/x.py", "-e", "1"), "exactly one of FILE"),
    (("exec", "--url", "https://a.test/code"), "cannot tell the runtime of"),
])
def test_code_url_flag_errors(args: tuple[str, ...], message: str) -> None:
    p = isol8(*args)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_exec_flags_default_to_none_so_the_config_applies():
    """Upstream's --net defaulted to "none" and so overrode the config's network: every
    flag a config key also sets must be absent unless given (test_config runs them)."""
    from isol8.cli import build_parser

    args = build_parser().parse_args(["exec", "-e", "1"])
    for name in ("net", "timeout", "memory", "cpu", "pids_limit", "max_output",
                 "sandbox_size", "tmp_size", "image"):
        assert getattr(args, name) is None, name
