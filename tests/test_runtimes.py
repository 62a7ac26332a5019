"""Runtimes on the host root filesystem: python, node, bash, and cmd."""

import pytest

import isol8.runtimes as runtimes
from isol8 import Isol8, RuntimeNotAvailable
from isol8.runtimes import UnknownRuntime, detect_runtime


def test_python(engine):
    r = engine.execute("import sys; print(sys.version_info[0], 2**8)", runtime="python")
    assert (r.exit_code, r.stdout, r.runtime) == (0, "3 256", "python")


def test_python_is_the_default_runtime(engine):
    assert engine.execute("print('py')").runtime == "python"


def test_node_runs_code_as_an_es_module(engine):
    r = engine.execute("const x = await Promise.resolve(41); console.log(x + 1, typeof require)",
                       runtime="node")
    assert (r.exit_code, r.stdout) == (0, "42 undefined")


def test_node_commonjs_with_file_extension(engine):
    r = engine.execute("console.log(typeof require)", runtime="node", file_extension=".cjs")
    assert r.stdout == "function"


def test_bash(engine):
    r = engine.execute('x=$((6*7)); echo "$x $BASH_VERSION" | cut -d. -f1', runtime="bash")
    assert r.exit_code == 0 and r.stdout.startswith("42 ")


def test_cmd_runs_bash_c_whatever_the_runtime(engine):
    r = engine.execute(cmd="echo $0; pwd", runtime="python")
    assert r.stdout.splitlines() == ["/usr/bin/bash", "/sandbox"]


def test_code_runs_from_sandbox_with_sandbox_on_sys_path(engine):
    r = engine.execute("import os, sys; print(os.getcwd(), sys.argv[0], sys.path[0])")
    assert r.stdout == "/sandbox /sandbox/main.py /sandbox"


def test_code_of_any_size(engine):
    # 2 MiB of source: far above argv's 128 KiB per-string limit.
    blob = "x" * (2 << 20)
    r = engine.execute(f"s = '{blob}'\nprint(len(s))")
    assert (r.exit_code, r.stdout) == (0, str(2 << 20))


@pytest.mark.parametrize("name, runtime", [
    ("a.py", "python"), ("b.js", "node"), ("c.mjs", "node"), ("d.cjs", "node"),
    ("e.sh", "bash"), ("DIR/F.PY", "python"),
])
def test_detect_runtime(name, runtime):
    assert detect_runtime(name).name == runtime


def test_unknown_extension_and_runtime_are_clear_errors(engine):
    with pytest.raises(UnknownRuntime, match=r"\.rb"):
        detect_runtime("x.rb")
    with pytest.raises(UnknownRuntime, match='Unknown runtime: "ruby". Available: python'):
        engine.execute("puts 1", runtime="ruby")


def test_missing_runtime_binary_is_a_clear_error(monkeypatch):
    missing = runtimes.Runtime("python", "/usr/bin/python-not-installed", ".py", (".py",))
    monkeypatch.setitem(runtimes.RUNTIMES, "python", missing)
    with pytest.raises(RuntimeNotAvailable, match="python-not-installed does not exist"):
        Isol8().execute("print(1)")


def test_host_files_runtimes_need_are_there(engine):
    # The loader cache, the host's TLS roots, and the sandbox user's identity.
    r = engine.execute("import ssl, pwd, os; "
                       "print(ssl.create_default_context().cert_store_stats()['x509_ca'] > 0, "
                       "os.path.exists('/etc/ld.so.cache'), pwd.getpwuid(os.getuid()).pw_name)")
    assert r.stdout == "True True sandbox"
    r = engine.execute("import fs from 'node:fs'; "
                       "console.log(fs.readdirSync('/etc/ssl/certs').length > 100)", runtime="node")
    assert r.stdout == "true"
