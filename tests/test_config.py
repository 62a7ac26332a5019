"""Config files: lookup, merging, the working directory's file that may only tighten, the
CLI's use of them (flags win) and ``isol8 config``. Real runs on the real kernel."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import test_code_url as served
from test_code_url import cert, tls
from isol8 import Isol8
from isol8.cli import main
from isol8.config import load_config
from isol8.errors import InvalidRequest
from isol8.remote_code import RemoteCodePolicy

README = Path(__file__).resolve().parent.parent / "README.md"
SHARED_FIXTURES = (cert, tls)  # pytest fixtures: the loopback TLS server of code URLs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with an empty ~/.isol8, no $ISOL8_CONFIG, and a working directory of
    its own (tmp_path/work)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ISOL8_CONFIG", raising=False)
    (tmp_path / "home" / ".isol8").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "home" / ".isol8"


def isol8(*args: str, cwd: Path, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    """The CLI with the test's HOME and no $ISOL8_CONFIG unless given."""
    base = {k: v for k, v in os.environ.items() if k != "ISOL8_CONFIG"}
    return subprocess.run([sys.executable, "-m", "isol8", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


# -- lookup ---------------------------------------------------------------------------------

def test_no_file_is_the_defaults(home: Path) -> None:
    config = load_config()
    assert config.files == [] and config.warnings == []
    assert set(config.sources.values()) == {"default"}
    options = config.engine_options()
    assert (options["timeout_ms"], options["memory_limit"], options["network"]) == \
        (30_000, "512m", "none")
    assert config.section("server") is None and config.section("mcp") is None
    assert config.remote_code() == RemoteCodePolicy()


def test_json_alone_is_read(home: Path) -> None:
    (home / "config.json").write_text('{"$schema": "./isol8.config.schema.json", '
                                      '"defaults": {"timeoutMs": 7000}}')
    config = load_config()
    assert config.warnings == []
    assert config.engine_options()["timeout_ms"] == 7000
    assert config.sources["defaults.timeoutMs"] == str(home / "config.json")


def test_toml_wins_over_json_and_the_json_is_named(home: Path) -> None:
    (home / "config.json").write_text('{"defaults": {"timeoutMs": 7000}}')
    (home / "config.toml").write_text("[defaults]\ntimeoutMs = 8000\n")
    config = load_config()
    assert config.engine_options()["timeout_ms"] == 8000
    assert config.files == [str(home / "config.toml")]
    assert config.warnings == [f"{home / 'config.json'}: ignored (config.toml is read when "
                               "both exist)"]


def test_isol8_config_replaces_the_home_files(home: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "config.toml").write_text("[defaults]\ntimeoutMs = 8000\n")
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[defaults]\nmemoryLimit = '1g'\n")
    monkeypatch.setenv("ISOL8_CONFIG", str(chosen))
    config = load_config()
    assert config.files == [str(chosen)]
    assert (config.engine_options()["timeout_ms"], config.engine_options()["memory_limit"]) \
        == (30_000, "1g")
    other = tmp_path / "other.json"
    other.write_text('{"defaults": {"pidsLimit": 9}}')
    assert load_config(path=str(other)).engine_options()["pids_limit"] == 9  # path wins
    monkeypatch.setenv("ISOL8_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(InvalidRequest, match=r"\$ISOL8_CONFIG: .*missing.toml is not a file"):
        load_config()


# -- merging and checking -------------------------------------------------------------------

def test_sections_merge_over_the_defaults_and_arrays_replace(home: Path) -> None:
    (home / "config.toml").write_text("""
poolSize = 0
[defaults]
timeoutMs = 9000
network = "filtered"
[network]
blacklist = ["^evil\\\\.test$"]
[remoteCode]
enabled = true
allowedHosts = ["^raw\\\\.githubusercontent\\\\.com$"]
""")
    config = load_config()
    options = config.engine_options()
    assert (options["timeout_ms"], options["memory_limit"], options["pool_size"]) == \
        (9000, "512m", 0)  # memoryLimit kept its default beside the file's timeoutMs
    assert options["network_filter"] == {"whitelist": [], "blacklist": [r"^evil\.test$"]}
    assert config.sources["defaults.memoryLimit"] == "default"
    policy = config.remote_code()
    assert policy.enabled and policy.allowed_schemes == ("https",)  # merged per key
    assert policy.hosts.whitelist == (r"^raw\.githubusercontent\.com$",)
    with Isol8(**options) as engine:  # the options are the engine's own keywords
        assert engine.execute("print('ok')").stdout == "ok"


@pytest.mark.parametrize("text, message", [
    ("[defaults]\ntimeoutMS = 1\n", r"config.toml: unknown key defaults.timeoutMS \(known: "),
    ("colour = 1\n", r"config.toml: unknown key colour \(known: "),
    ("[defaults]\nmemoryLimit = 'lots'\n", r"config.toml: defaults.memoryLimit: expected a "),
    ("[defaults]\nnetwork = 'wide'\n", r"config.toml: defaults.network: expected one of "),
    ("[security]\nseccomp = 'custom'\n", r"config.toml: security.seccomp: expected one of"),
    ("[remoteCode]\nenable = true\n", r"config.toml: unknown key remoteCode.enable "),
    ("[remoteCode]\nmaxCodeSize = -1\n", r"config.toml: remoteCode.maxCodeSize"),
    ("poolSize = {clean = 1, warm = 2}\n", r"config.toml: poolSize: unknown key\(s\) warm"),
    ("defaults = 3\n", r"config.toml: defaults: expected a table"),
    ("[defaults\n", r"config.toml: "),
])
def test_errors_name_the_file_and_the_key(home: Path, text: str, message: str) -> None:
    (home / "config.toml").write_text(text)
    with pytest.raises(InvalidRequest, match=message):
        load_config()


def test_upstream_keys_with_no_meaning_here_warn_once_each(home: Path) -> None:
    (home / "config.json").write_text(json.dumps({
        "cleanup": {"autoPrune": False, "maxContainerAgeMs": 5},
        "prebuiltImages": [{"tag": "x", "runtime": "python"}], "debug": True,
        "security": {"seccomp": "strict", "customProfilePath": "/x.json"},
        "defaults": {"readonlyRootFs": False}}))
    config = load_config()
    named = [re.match(r".*config\.json: (\S+?)(?: = \S+)?: ignored", w).group(1)
             for w in config.warnings]
    assert named == ["cleanup.autoPrune", "cleanup.maxContainerAgeMs", "prebuiltImages",
                     "debug", "security.customProfilePath", "defaults.readonlyRootFs"]
    assert config.values["defaults"]["readonlyRootFs"] is True  # type: ignore[index]


def test_mcp_section_is_checked_by_the_mcp_limits(home: Path) -> None:
    pytest.importorskip("isol8.mcp.limits")
    (home / "config.toml").write_text("[mcp]\nmaxSessions = 3\n")
    config = load_config()
    assert config.section("mcp") == {"maxSessions": 3}
    assert config.mcp_limits().max_sessions == 3
    (home / "config.toml").write_text("[mcp]\nmaxSesions = 3\n")
    with pytest.raises(InvalidRequest, match=r"config.toml: mcp.maxSesions: unknown key"):
        load_config()


def test_server_section_is_the_server_policy(home: Path) -> None:
    pytest.importorskip("fastapi")
    (home / "config.toml").write_text(
        "maxConcurrent = 3\n[server]\nruntimes = ['bash']\n[server.ceilings]\n"
        "timeoutMs = 9000\n")
    policy = load_config().server_policy()
    assert policy.runtimes == ("bash",) and policy.ceilings["timeoutMs"] == 9000
    assert policy.capacity.max_concurrent == 3  # upstream's maxConcurrent
    (home / "config.toml").write_text("[server.ceilings]\nmemoryLimt = '1g'\n")
    with pytest.raises(InvalidRequest, match=r"config.toml: server.ceilings: unknown key.* "
                                             r"memoryLimt"):
        load_config().server_policy()


def test_a_policy_file_is_read_as_the_server_section(tmp_path: Path, home: Path) -> None:
    pytest.importorskip("fastapi")
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"runtimes": ["bash"], "network": {"modes": ["none"]}}')
    config = load_config(path=str(policy_file))
    assert config.section("server") == {"runtimes": ["bash"], "network": {"modes": ["none"]}}
    assert config.server_policy().network_modes == ("none",)
    assert config.engine_options()["network"] == "none"
    policy_file.write_text('{"ceilings": {"memoryLimt": "1g"}}')
    with pytest.raises(InvalidRequest, match=r"policy.json: ceilings: unknown key"):
        load_config(path=str(policy_file)).server_policy()
    policy_file.write_text('{"runtimes": ["bash"], "defaults": {"timeoutMs": 1}}')
    with pytest.raises(InvalidRequest, match=r"policy.json: runtimes is a server policy key "
                                             r"and defaults a config key"):
        load_config(path=str(policy_file))


# -- the working directory's file -----------------------------------------------------------

def test_the_working_directory_file_cannot_weaken(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (home / "config.toml").write_text("[security]\nseccomp = 'strict'\n")
    cwd_file = tmp_path / "work" / "isol8.config.json"
    cwd_file.write_text(json.dumps({
        "defaults": {"network": "host", "timeoutMs": 600_000, "memoryLimit": "8g",
                     "mounts": [{"source": str(source), "target": "/sandbox/data"}],
                     "image": "/"},
        "network": {"whitelist": [".*"]},
        "security": {"seccomp": "unconfined"},
        "remoteCode": {"enabled": True, "allowedHosts": [".*"], "maxCodeSize": "1g"},
        "server": {"network": {"modes": ["host"]}},
        "mcp": {"maxSessions": 1000},
        "poolSize": 50, "maxConcurrent": 100}))
    config = load_config()
    assert config.engine_options() == load_config(cwd=str(home)).engine_options()
    assert config.remote_code() == RemoteCodePolicy()
    assert config.section("server") is None and config.section("mcp") is None
    ignored = [w.split(": ")[1] for w in config.warnings]
    assert ignored == ["defaults.network", "defaults.timeoutMs", "defaults.memoryLimit",
                       "defaults.mounts", "defaults.image", "network.whitelist",
                       "security.seccomp", "remoteCode.enabled", "remoteCode.allowedHosts",
                       "remoteCode.maxCodeSize", "server", "mcp", "poolSize",
                       "maxConcurrent"]
    assert all(w.startswith(f"{cwd_file}: ") for w in config.warnings)
    assert "not lower than the 30000 in effect" in config.warnings[1]


def test_the_working_directory_file_can_tighten(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("""
[defaults]
network = "filtered"
timeoutMs = 60000
[network]
blacklist = ["^a\\\\.test$"]
[security]
seccomp = "unconfined"
[remoteCode]
enabled = true
""")
    cwd_file = tmp_path / "work" / "isol8.config.json"
    cwd_file.write_text(json.dumps({
        "defaults": {"timeoutMs": 2000, "memoryLimit": "128m", "network": "none"},
        "network": {"blacklist": [r"^b\.test$"]},
        "security": {"seccomp": "strict"},
        "remoteCode": {"enabled": False}}))
    config = load_config()
    assert config.warnings == []
    options = config.engine_options()
    assert (options["timeout_ms"], options["memory_limit"], options["network"],
            options["seccomp"]) == (2000, "128m", "none", "strict")
    network = config.values["network"]
    assert network["blacklist"] == [r"^a\.test$", r"^b\.test$"]  # type: ignore[index]
    assert config.remote_code().enabled is False
    label = f"{cwd_file} (working directory)"
    assert config.sources["defaults.timeoutMs"] == label
    assert config.sources["network.blacklist"] == label
    assert config.sources["defaults.cpuLimit"] == "default"
    assert config.files == [str(home / "config.toml"), str(cwd_file)]


def test_the_working_directory_file_named_explicitly_is_trusted(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Named by $ISOL8_CONFIG (the user chose it), it is read in full, and once."""
    Path("isol8.config.json").write_text('{"defaults": {"timeoutMs": 90000}}')
    monkeypatch.setenv("ISOL8_CONFIG", "isol8.config.json")
    config = load_config()
    assert config.engine_options()["timeout_ms"] == 90_000 and config.warnings == []
    assert config.files == [os.path.abspath("isol8.config.json")]


def test_an_unknown_key_in_the_working_directory_file_is_an_error(home: Path) -> None:
    Path("isol8.config.json").write_text('{"defaults": {"timeout": 1}}')
    with pytest.raises(InvalidRequest, match=r"work/isol8.config.json: unknown key "
                                             r"defaults.timeout"):
        load_config()


# -- the CLI --------------------------------------------------------------------------------

def test_exec_takes_the_config_timeout_and_the_flag_wins(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("[defaults]\ntimeoutMs = 300\n")
    env = {"HOME": str(tmp_path / "home")}
    p = isol8("exec", "--cmd", "sleep 20", cwd=tmp_path / "work", env=env)
    assert p.returncode == 137 and "EXECUTION TIMED OUT" in p.stderr, p.stderr
    p = isol8("exec", "--timeout", "20000", "--cmd", "sleep 0.5; echo done",
              cwd=tmp_path / "work", env=env)
    assert (p.returncode, p.stdout) == (0, "done\n"), p.stderr


def test_exec_network_from_the_config_unless_a_flag_says(home: Path, tmp_path: Path) -> None:
    """Upstream's --net defaulted to none, which overrode the config's network."""
    (home / "config.toml").write_text("[defaults]\nnetwork = 'filtered'\n")
    env = {"HOME": str(tmp_path / "home")}
    show = ("--cmd", "echo ${HTTP_PROXY:-no proxy}")
    assert isol8("exec", *show, cwd=tmp_path / "work", env=env).stdout == \
        "http://127.0.0.1:8118\n"
    assert isol8("exec", "--net", "none", *show, cwd=tmp_path / "work", env=env).stdout == \
        "no proxy\n"
    (tmp_path / "work" / "isol8.config.json").write_text('{"defaults": {"network": "none"}}')
    assert isol8("exec", *show, cwd=tmp_path / "work", env=env).stdout == "no proxy\n"


def test_exec_mounts_are_the_config_s_and_the_flag_s(home: Path, tmp_path: Path) -> None:
    """--mount adds to the config's mounts (a list flag that adds, as --deny does)."""
    shared = Path(tempfile.mkdtemp(prefix="isol8-config-", dir="/var/tmp"))
    try:
        for name in ("a", "b"):
            (shared / name).mkdir()
            (shared / name / "f").write_text(name)
        shared.chmod(0o755)
        (home / "config.json").write_text(json.dumps({"defaults": {"mounts": [
            {"source": str(shared / "a"), "target": "/mnt/a"}]}}))
        p = isol8("exec", "--mount", f"{shared / 'b'}:/mnt/b", "--cmd",
                  "cat /mnt/a/f /mnt/b/f", cwd=tmp_path / "work",
                  env={"HOME": str(home.parent)})
        assert (p.returncode, p.stdout) == (0, "ab"), p.stderr
    finally:
        shutil.rmtree(shared)


def test_exec_prints_the_warnings_and_refuses_a_bad_file(home: Path, tmp_path: Path) -> None:
    (tmp_path / "work" / "isol8.config.json").write_text('{"defaults": {"network": "host"}}')
    env = {"HOME": str(tmp_path / "home")}
    p = isol8("exec", "--cmd", "echo ran", cwd=tmp_path / "work", env=env)
    assert p.stdout == "ran\n"
    assert p.stderr == (f"isol8: warning: {tmp_path / 'work' / 'isol8.config.json'}: "
                        "defaults.network: ignored (a working-directory file may only "
                        'tighten it ("none" in effect))\n')
    (home / "config.toml").write_text("[defaults]\ntimeoutMs = 'soon'\n")
    p = isol8("exec", "--cmd", "echo ran", cwd=tmp_path / "work", env=env)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.endswith(f"isol8: {home / 'config.toml'}: defaults.timeoutMs: expected a "
                             "positive integer, got 'soon'\n")


def test_isol8_config_prints_values_and_sources(home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text("[defaults]\ntimeoutMs = 9000\nmemoryLimit = '1g'\n")
    (tmp_path / "work" / "isol8.config.json").write_text(
        '{"defaults": {"timeoutMs": 5000, "memoryLimit": "2g"}}')
    env = {"HOME": str(tmp_path / "home")}
    p = isol8("config", cwd=tmp_path / "work", env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    cwd_file = tmp_path / "work" / "isol8.config.json"
    assert lines[0] == f"# files: {home / 'config.toml'}, {cwd_file}"
    assert f"defaults.timeoutMs = 5000  # {cwd_file} (working directory)" in lines
    assert f'defaults.memoryLimit = "1g"  # {home / "config.toml"}' in lines
    assert 'defaults.network = "none"  # default' in lines
    assert "defaults.memoryLimit: ignored" in p.stderr
    p = isol8("config", "--json", cwd=tmp_path / "work", env=env)
    out = json.loads(p.stdout)
    assert out["values"]["defaults"]["timeoutMs"] == 5000
    assert out["sources"]["defaults.timeoutMs"] == f"{cwd_file} (working directory)"
    assert out["files"] == [str(home / "config.toml"), str(cwd_file)]
    assert len(out["warnings"]) == 1
    if importlib.util.find_spec("fastapi") is not None:  # the server section is checked
        (home / "config.toml").write_text("[server.ceilings]\nmemoryLimt = '1g'\n")
        p = isol8("config", cwd=tmp_path / "work", env=env)
        assert p.returncode == 1 and p.stdout == ""
        assert f"isol8: {home / 'config.toml'}: server.ceilings: unknown key" in p.stderr


def test_serve_takes_its_policy_from_the_config(home: Path, tmp_path: Path) -> None:
    """A real server on a loopback port: the home file's [server] section refuses python."""
    pytest.importorskip("fastapi")
    from test_server import Server

    (home / "config.toml").write_text("[server]\nruntimes = ['bash']\n")
    srv = Server(None, env={"HOME": str(tmp_path / "home")})
    try:
        status, body = srv.execute("print(1)")
        assert (status, body["error"].split(":")[0]) == (400, "request.runtime"), body
        status, body = srv.call("POST", "/execute", {"request": {"cmd": "echo hi"}})
        assert (status, body.get("stdout")) == (200, "hi"), body
    finally:
        srv.stop()


def test_exec_fetches_a_url_under_the_config_remote_code(
        home: Path, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on loopback only: test_code_url's TLS server, a name pinned to it (and
    this process's loopback-only connector); a working-directory file can turn it off."""
    cert, tls = request.getfixturevalue("cert"), request.getfixturevalue("tls")
    url = "https://code.test/hello.py"
    p = isol8("exec", "--url", url, cwd=tmp_path / "work", env={"HOME": str(home.parent)})
    assert p.returncode == 1 and "remote code is disabled" in p.stderr, p.stderr
    policy = served.remote_code(cert, tls)
    (home / "config.json").write_text(json.dumps({"remoteCode": policy}))
    digest = hashlib.sha256(served.HELLO).hexdigest()
    assert main(["exec", "--url", url, "--hash", digest]) == 0
    assert capsys.readouterr().out == "hello from a url\n"
    assert main(["exec", "--url", url, "--hash", "0" * 64]) == 1
    assert "sha256" in capsys.readouterr().err
    Path("isol8.config.json").write_text('{"remoteCode": {"enabled": false}}')
    assert main(["exec", "--url", url]) == 1
    assert "remote code is disabled" in capsys.readouterr().err


# -- the README's example -------------------------------------------------------------------

def _readme_example() -> str:
    text = README.read_text()
    block = text.split("<!-- example: config -->", 1)[1].split("<!-- /example -->", 1)[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs(home: Path) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_readme_example(), "README.md (config)", "exec"), namespace)
    fast, slow = namespace["fast"], namespace["slow"]
    assert (fast.stdout, fast.exit_code) == ("in time", 0)  # type: ignore[attr-defined]
    assert slow.exit_code == 137  # type: ignore[attr-defined]
    assert slow.duration_ms < 4000  # type: ignore[attr-defined]


def test_the_readme_schema_example_loads(home: Path) -> None:
    text = README.read_text()
    section = text.split("## Config files", 1)[1]
    (home / "config.toml").write_text(section.split("```toml\n", 1)[1].split("```", 1)[0])
    config = load_config()
    assert config.warnings == [] and config.engine_options()["network"] == "none"
    assert config.section("server") == {"runtimes": ["python", "node", "bash"]}
