"""Request files and workdir: written first by the sandbox user, confined by the kernel."""

import hashlib

import pytest

from isol8 import InvalidRequest, SandboxSetupError


def test_files_are_written_before_the_code_with_parents_created(engine):
    blob = bytes(range(256)) * 4096  # 1 MiB, binary
    r = engine.execute(
        "import hashlib, json\n"
        "print(json.load(open('/sandbox/data/in.json'))['a'] + 1)\n"
        "print(hashlib.sha256(open('/tmp/deep/er/blob.bin', 'rb').read()).hexdigest())",
        files={"/sandbox/data/in.json": '{"a": 41}', "/tmp/deep/er/blob.bin": blob})
    assert r.stdout.splitlines() == ["42", hashlib.sha256(blob).hexdigest()]


def test_files_reach_cmd_runs_too(engine):
    r = engine.execute(cmd="cat /sandbox/a.txt; ls -l /sandbox/a.txt | cut -c1-10",
                       files={"/sandbox/a.txt": "hello\n"})
    assert r.stdout.splitlines() == ["hello", "-rw-r--r--"]


def test_workdir_is_relative_to_sandbox_and_created(engine):
    r = engine.execute(cmd="pwd; ls", workdir="proj/src", files={"/sandbox/proj/src/x": "1"})
    assert r.stdout.splitlines() == ["/sandbox/proj/src", "x"]
    assert engine.execute(cmd="pwd", workdir="/sandbox/a/../b").stdout == "/sandbox/b"


@pytest.mark.parametrize("workdir", ["..", "/etc", "/sandbox/../tmp", "a/../../x"])
def test_workdir_cannot_leave_the_sandbox(engine, workdir):
    with pytest.raises(InvalidRequest, match="Working directory must be inside /sandbox"):
        engine.execute(cmd="pwd", workdir=workdir)


@pytest.mark.parametrize("files", [
    {"relative.txt": "x"}, {"/etc/passwd": "x"}, {"/sandbox/../etc/x": "x"},
    {"/usr/bin/python3": "x"}, {"/sandbox/a": 42}, ["/sandbox/a"],
    {f"/sandbox/f{i}": "" for i in range(64)},
])
def test_bad_files_are_refused_before_running(engine, files):
    with pytest.raises(InvalidRequest, match="files"):
        engine.execute(cmd="true", files=files)


def test_a_file_the_kernel_refuses_is_reported_with_its_path(engine):
    # /tmp/x/y is a file, so /tmp/x/y/z cannot be created: the failure happens inside the
    # sandbox, as the sandbox user, and names the path.
    with pytest.raises(SandboxSetupError) as info:
        engine.execute(cmd="true", files={"/tmp/x/y": "a", "/tmp/x/y/z": "b"})
    assert (info.value.step, info.value.syscall, info.value.path) == (
        "exec", "write file", "/tmp/x/y/z")
