"""The real ``python -m isol8 mcp``: over stdio with the SDK's stdio client, and over
streamable HTTP on 127.0.0.1 behind its bearer token; the tools on a remote ``isol8
serve`` (--host); and the README's example, run verbatim."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import host_processes_matching

pytest.importorskip("mcp", reason="the MCP SDK (isol8[mcp]) is not installed")

import httpx2  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

TOKENS = ("token-of-alice-0123456789", "token-of-bob-9876543210ab")
README = Path(__file__).resolve().parent.parent / "README.md"


def _env(home: Path, **more: str) -> dict[str, str]:
    """The server's environment: no config file of this host's user (HOME is a fresh one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISOL8_MCP", "ISOL8_CONF"))}
    return {**env, "HOME": str(home), **more}


async def until_running(marker: str) -> list[str]:
    deadline = time.monotonic() + 10
    while not (found := host_processes_matching(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return found


def test_stdio_server_sessions_progress_cancel_and_disconnect(tmp_path):
    marker, cancelled = "2718.2818", "1618.0339"
    params = StdioServerParameters(command=sys.executable, args=["-m", "isol8", "mcp"],
                                   env=_env(tmp_path), cwd=str(tmp_path))

    async def main():
        async with Client(params) as client:
            sid = (await client.call_tool("create_session", {})).structured_content[
                "sessionId"]
            await client.call_tool("execute_in_session", {"session_id": sid,
                                                          "code": "total = 40"})
            kept = await client.call_tool("execute_in_session", {
                "session_id": sid, "code": "total += 2\nprint(total)"})
            seen: list[str] = []

            async def progress(done, total, message):
                seen.append(message)
            streamed = await client.call_tool("execute_code", {
                "cmd": "echo one; sleep 0.3; echo two"}, progress_callback=progress)
            await client.call_tool("execute_in_session", {
                "session_id": sid, "cmd": f"(setsid sleep {marker} > /dev/null 2>&1 &)"})
            assert await until_running(marker)
            # a client's cancel reaches the server over JSON-RPC and kills the run
            run = asyncio.create_task(client.call_tool("execute_code", {
                "cmd": f"sleep {cancelled}"}))
            assert await until_running(cancelled)
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            deadline = time.monotonic() + 5
            while host_processes_matching(cancelled) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            left_cancelled = host_processes_matching(cancelled)
            after = await client.call_tool("execute_code", {"code": "print('still up')"})
            return kept, seen, streamed, left_cancelled, after
    kept, seen, streamed, left_cancelled, after = asyncio.run(main())
    assert kept.structured_content["stdout"] == "42"
    assert streamed.structured_content["stdout"] == "one\ntwo"
    assert seen[0] == "one\n" and "".join(seen) == "one\ntwo\n"
    assert left_cancelled == [] and after.structured_content["stdout"] == "still up"
    # the client hung up: the server process ended and the session's sandbox with it
    deadline = time.monotonic() + 10
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_matching(marker) == []


def test_stdio_ends_at_eof_on_a_pipe_and_on_anything_else(tmp_path):
    """On pipes the server reads and writes on the loop, anything else (here /dev/null)
    keeps the SDK's threads; either way EOF ends it cleanly."""
    for stdin in (subprocess.PIPE, subprocess.DEVNULL):
        run = subprocess.run([sys.executable, "-m", "isol8", "mcp"], stdin=stdin, input=None,
                             env=_env(tmp_path), cwd=tmp_path, capture_output=True,
                             timeout=60)
        assert (run.returncode, run.stdout) == (0, b""), run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(home: Path, *flags: str) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "isol8", "mcp", "--http", "--port", str(port), *flags],
        env=_env(home, ISOL8_MCP_TOKEN=",".join(TOKENS)), cwd=home,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"isol8 mcp --http did not start: "
                                         f"{proc.communicate()[0]}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output


@contextlib.asynccontextmanager
async def http_client(url: str, token: str):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


def test_http_server_requires_its_token_and_keeps_each_callers_sessions(tmp_path):
    marker = "1303.2472"
    alice, bob = TOKENS

    async def main(url: str):
        async with httpx2.AsyncClient() as http:
            refused = [await http.post(url, json={}, headers=headers) for headers in (
                {}, {"Authorization": "Bearer wrong-token-0123456789"},
                {"Authorization": f"Basic {alice}"})]
        async with http_client(url, alice) as a:
            made = await a.call_tool("create_session", {"session_id": "work"})
            await a.call_tool("execute_in_session", {"session_id": "work", "code": "n = 7"})
            await a.call_tool("execute_in_session", {
                "session_id": "work", "cmd": f"(setsid sleep {marker} > /dev/null 2>&1 &)"})
        async with http_client(url, bob) as b:  # the same id, another caller
            reach = await b.call_tool("execute_in_session", {"session_id": "work",
                                                             "code": "print(n)"})
            listed = await b.call_tool("list_sessions", {})
            destroy = await b.call_tool("destroy_session", {"session_id": "work"})
            own = await b.call_tool("create_session", {"session_id": "work",
                                                       "runtime": "bash"})
        async with http_client(url, alice) as a:  # a new connection, the same caller
            kept = await a.call_tool("execute_in_session", {"session_id": "work",
                                                            "code": "print(n * 6)"})
            listed_a = await a.call_tool("list_sessions", {})
        return refused, made, reach, listed, destroy, own, kept, listed_a
    with http_server(tmp_path) as url:
        refused, made, reach, listed, destroy, own, kept, listed_a = asyncio.run(main(url))
        assert host_processes_matching(marker)
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert refused[0].headers["www-authenticate"].startswith("Bearer")
    assert made.structured_content["sessionId"] == "work"
    assert reach.is_error and "no session 'work'" in reach.content[0].text
    assert listed.structured_content == {"sessions": []}
    assert destroy.structured_content["destroyed"] is False
    assert own.structured_content["runtime"] == "bash"
    assert kept.structured_content["stdout"] == "42"
    assert [s["runtime"] for s in listed_a.structured_content["sessions"]] == ["python"]
    # the server stopped on SIGTERM (exit 0, checked above) and its sessions with it
    assert host_processes_matching(marker) == []


def test_http_refuses_to_start_without_a_usable_token(tmp_path):
    def start(*flags: str, http: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "isol8", "mcp", *flags, *(
                                  ["--http", "--port", str(_free_port())] if http else [])],
                              env=_env(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
    none, short = start(), start("--token", "short")
    key_alone, port_alone = start("--key", "k"), start("--port", "3100", http=False)
    assert none.returncode != 0 and "needs a bearer token" in none.stderr
    assert short.returncode != 0 and "at least 16 printable characters" in short.stderr
    assert key_alone.returncode != 0 and "--key: only with --host" in key_alone.stderr
    assert port_alone.returncode != 0 and "only with --http" in port_alone.stderr


def test_remote_mode_runs_the_tools_on_an_isol8_serve(tmp_path):
    pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
    from test_server import KEY, running

    async def main(url: str):
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "isol8", "mcp", "--host", url, "--key", KEY],
            env=_env(tmp_path), cwd=str(tmp_path))
        async with Client(params) as client:
            once = await client.call_tool("execute_code", {"code": "print(2 ** 8)"})
            slow = await client.call_tool("execute_code", {"cmd": "sleep 5", "timeout_ms": 300})
            sid = (await client.call_tool("create_session", {})).structured_content["sessionId"]
            await client.call_tool("execute_in_session", {"session_id": sid, "code": "v = 'kept'"})
            kept = await client.call_tool("execute_in_session", {"session_id": sid,
                                                                 "code": "print(v)"})
            return once, slow, kept
    with running() as server:
        once, slow, kept = asyncio.run(main(server.url))
        deadline = time.monotonic() + 10
        while (sessions := server.call("GET", "/sessions")[1]["sessions"]) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    assert once.structured_content["stdout"] == "256"
    assert not slow.is_error and "timed out" in slow.structured_content["failure"]
    assert kept.structured_content["stdout"] == "kept"
    assert sessions == []  # the MCP session's server session ended with the connection


def test_the_config_files_engine_options_and_mcp_limits_apply(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\ntimeoutMs = 400\n[mcp]\nmaxSessions = 1\n")
    params = StdioServerParameters(command=sys.executable, args=["-m", "isol8", "mcp"],
                                   env=_env(tmp_path, ISOL8_CONFIG=str(config)),
                                   cwd=str(tmp_path))

    async def main():
        async with Client(params) as client:
            slow = await client.call_tool("execute_code", {"code": "while True: pass"})
            first = await client.call_tool("create_session", {"runtime": "bash"})
            second = await client.call_tool("create_session", {"runtime": "bash"})
            return slow, first, second
    slow, first, second = asyncio.run(main())
    assert slow.structured_content["durationMs"] < 3000
    assert "timed out" in slow.structured_content["failure"]
    assert not first.is_error and second.is_error
    assert "at most 1 sessions" in second.content[0].text
    config.write_text("[mcp]\nmaxSesions = 1\n")
    bad = subprocess.run([sys.executable, "-m", "isol8", "mcp"], stdin=subprocess.DEVNULL,
                         env=_env(tmp_path, ISOL8_CONFIG=str(config)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "mcp.maxSesions: unknown key" in bad.stderr


def readme_section() -> str:
    """The README's MCP section."""
    text = README.read_text()
    start = text.index("## MCP server")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def readme_example() -> str:
    match = re.search(r"<!-- example: mcp -->\s*```python\n(.*?)```\s*<!-- /example -->",
                      readme_section(), re.S)
    assert match, "the README's MCP example is missing"
    return match.group(1)


def test_the_readme_config_blocks_are_what_the_server_takes():
    from isol8.mcp.limits import McpLimits

    blocks = dict(re.findall(r"```(json|toml)\n(.*?)```", readme_section(), re.S))
    entry = json.loads(blocks["json"])["mcpServers"]["isol8"]
    assert [entry["command"], *entry["args"]] == ["isol8", "mcp"]
    # the documented limits are the defaults
    assert McpLimits.from_mapping(tomllib.loads(blocks["toml"])["mcp"]) == McpLimits()


def test_the_readme_example_runs_verbatim(tmp_path):
    run = subprocess.run([sys.executable, "-c", readme_example()], env=_env(tmp_path),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["42", "hello", "from", "the", "session"]
