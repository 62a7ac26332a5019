"""isol8's MCP tools through the SDK's in-memory client: real SDK, real sandboxes.

Each test serves a fresh ``build_server`` to a ``Client`` in this process (the SDK's own
in-process transport), so the tools, their schemas, progress and cancellation are the
ones a stdio or HTTP client meets; test_mcp_transports.py covers the transports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from conftest import host_processes_matching
from isol8 import InvalidRequest

pytest.importorskip("mcp", reason="the MCP SDK (isol8[mcp]) is not installed")

from mcp import Client  # noqa: E402

from isol8.mcp.engines import Backend  # noqa: E402
from isol8.mcp.limits import McpLimits  # noqa: E402
from isol8.mcp.tools import build_server  # noqa: E402


@contextlib.asynccontextmanager
async def serving(limits: McpLimits = McpLimits(), **options: object) -> AsyncIterator[Client]:
    """A connected client of a new server whose engines are all stopped afterwards."""
    backend = Backend(options, max_concurrent=limits.max_concurrent)
    try:
        async with Client(build_server(backend, limits, lambda ctx: "")) as client:
            yield client
    finally:
        await backend.close()


def serve(test, **kw):
    """Run ``test(client)`` against a fresh server, on a loop of its own."""
    async def main():
        async with serving(**kw) as client:
            return await test(client)
    return asyncio.run(main())


async def call(client: Client, tool: str, **arguments: object):
    return await client.call_tool(tool, arguments)


async def until_running(marker: str) -> list[str]:
    """The marked sandbox process, once the host shows it (a background start may lag)."""
    deadline = time.monotonic() + 10
    while not (found := host_processes_matching(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return found


def test_tools_have_typed_inputs_and_output_schemas():
    async def test(client):
        return {tool.name: tool for tool in (await client.list_tools()).tools}
    tools = serve(test)
    assert set(tools) == {"execute_code", "create_session", "execute_in_session", "put_file",
                          "get_file", "list_sessions", "destroy_session"}
    run = tools["execute_code"]
    props = run.input_schema["properties"]
    assert {"code", "cmd", "runtime", "timeout_ms", "stdin", "env", "files",
            "install_packages"} <= set(props)
    assert {"session_id", "code", "cmd", "install_packages"} \
        <= set(tools["execute_in_session"].input_schema["properties"])
    assert props["code"]["description"] and props["timeout_ms"]["anyOf"][0]["type"] == "integer"
    assert set(run.output_schema["properties"]) == {"stdout", "stderr", "exitCode",
                                                      "durationMs", "truncated", "failure"}
    assert tools["get_file"].output_schema["properties"]["contentBase64"]["type"] == "string"
    assert tools["put_file"].input_schema["required"] == ["session_id", "path",
                                                          "content_base64"]


def test_execute_code_answers_the_small_contract_structured_and_as_text():
    async def test(client):
        ok = await call(client, "execute_code", code="import sys; print(6 * 7); "
                        "print('warn', file=sys.stderr)")
        failing = await call(client, "execute_code", cmd="echo out; exit 3")
        fed = await call(client, "execute_code", code="print(input()[::-1], open("
                         "'/sandbox/a.txt').read())", stdin="olleh\n",
                         files={"/sandbox/a.txt": "from a file"})
        node = await call(client, "execute_code", code="console.log(process.env.X)",
                          runtime="node", env={"X": "from env"})
        return ok, failing, fed, node
    ok, failing, fed, node = serve(test)
    assert not ok.is_error
    assert ok.structured_content == {"stdout": "42", "stderr": "warn", "exitCode": 0,
                                     "durationMs": ok.structured_content["durationMs"],
                                     "truncated": False, "failure": None}
    assert ok.content[0].text.startswith("42\n[stderr]\nwarn\n[exit code 0, ")
    # a failing program is a result the model reads, not a tool error
    assert not failing.is_error
    assert (failing.structured_content["stdout"], failing.structured_content["exitCode"]) \
        == ("out", 3)
    assert "[exit code 3," in failing.content[0].text
    assert fed.structured_content["stdout"] == "hello from a file"
    assert node.structured_content["stdout"] == "from env"


def test_a_timeout_is_a_result_with_its_failure_sentence_not_an_error():
    async def test(client):
        return await call(client, "execute_code", code="while True: pass", timeout_ms=400)
    result = serve(test)
    assert not result.is_error
    sc = result.structured_content
    assert sc["exitCode"] != 0 and 300 <= sc["durationMs"] < 3000
    assert sc["failure"].startswith("the code timed out and was killed after")
    assert sc["failure"] in result.content[0].text


def test_invalid_input_is_a_tool_error_that_says_what_is_wrong():
    async def test(client):
        return [await call(client, "execute_code", **args) for args in (
            {}, {"code": "1", "cmd": "true"}, {"code": "1", "runtime": "cobol"},
            {"code": "1", "timeout_ms": 10**9}, {"code": "1", "timeout_ms": "soon"},
            {"cmd": "true", "files": {"/etc/passwd": "x"}},
            {"code": "1", "install_packages": ["six"]})]
    results = serve(test)
    assert all(r.is_error for r in results)
    texts = [r.content[0].text for r in results]
    assert "exactly one of code and cmd" in texts[0] and "exactly one" in texts[1]
    assert 'Unknown runtime: "cobol"' in texts[2]
    assert "timeout_ms: at most 300000" in texts[3]
    assert "timeout_ms" in texts[4]
    assert "/etc/passwd" in texts[5] and "/sandbox" in texts[5]
    assert "install_packages: needs network='filtered'" in texts[6]


def test_progress_reports_output_before_the_result():
    async def test(client):
        seen: list[tuple[float, str, float]] = []

        async def progress(done, total, message):
            seen.append((done, message, time.monotonic()))
        result = await client.call_tool("execute_code", {
            "code": "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n"
                    "    time.sleep(0.3)"}, progress_callback=progress)
        return seen, result, time.monotonic()
    seen, result, finished = serve(test)
    assert result.structured_content["stdout"] == "tick 0\ntick 1\ntick 2"
    assert "".join(message for _, message, _ in seen) == "tick 0\ntick 1\ntick 2\n"
    assert [done for done, _, _ in seen] == sorted({done for done, _, _ in seen})
    # the first tick was reported while the run still had most of a second to go
    assert finished - seen[0][2] > 0.4


def test_a_client_cancel_kills_the_run():
    marker = "3141.5926"

    async def test(client):
        started = asyncio.Event()

        async def progress(done, total, message):
            started.set()
        call_task = asyncio.create_task(client.call_tool("execute_code", {
            "cmd": f"(setsid sleep {marker} &); echo go; sleep {marker}"},
            progress_callback=progress))
        await asyncio.wait_for(started.wait(), 10)
        assert await until_running(marker)
        t0 = time.monotonic()
        call_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call_task
        took = time.monotonic() - t0
        # gone once the cancel returned, with the server still up
        return took, host_processes_matching(marker)
    took, left = serve(test)
    assert took < 5 and left == []


def test_a_python_session_keeps_variables_files_and_its_runtime():
    async def test(client):
        made = await call(client, "create_session", runtime="python")
        sid = made.structured_content["sessionId"]
        await call(client, "execute_in_session", session_id=sid, code="x = 41\nimport math")
        kept = await call(client, "execute_in_session", session_id=sid,
                          code="print(x + 1, math.floor(2.5))")
        blob = bytes(range(256)) * 4
        put = await call(client, "put_file", session_id=sid, path="/sandbox/blob.bin",
                         content_base64=base64.b64encode(blob).decode())
        shell = await call(client, "execute_in_session", session_id=sid,
                           cmd="wc -c < /sandbox/blob.bin")
        got = await call(client, "get_file", session_id=sid, path="/sandbox/blob.bin")
        listed = await call(client, "list_sessions")
        gone = await call(client, "destroy_session", session_id=sid)
        after = await call(client, "execute_in_session", session_id=sid, code="print(x)")
        again = await call(client, "destroy_session", session_id=sid)
        return made, kept, put, shell, got, blob, listed, gone, after, again
    made, kept, put, shell, got, blob, listed, gone, after, again = serve(test)
    assert made.structured_content["runtime"] == "python"
    assert made.structured_content["sessionId"].startswith("s-")
    assert kept.structured_content["stdout"] == "42 2"
    assert put.structured_content == {"path": "/sandbox/blob.bin", "size": 1024}
    assert shell.structured_content["stdout"].strip() == "1024"
    assert base64.b64decode(got.structured_content["contentBase64"]) == blob
    assert [s["sessionId"] for s in listed.structured_content["sessions"]] \
        == [made.structured_content["sessionId"]]
    assert gone.structured_content["destroyed"] is True
    assert after.is_error and "no session" in after.content[0].text
    assert again.structured_content["destroyed"] is False


def test_file_sizes_are_capped_both_ways():
    limits = McpLimits(max_file_bytes=1000)

    async def test(client):
        sid = (await call(client, "create_session", session_id="files",
                          runtime="bash")).structured_content["sessionId"]
        await call(client, "execute_in_session", session_id=sid,
                   cmd="head -c 1001 /dev/zero > /sandbox/big; head -c 1000 /dev/zero "
                       "> /sandbox/fits")
        big = await call(client, "get_file", session_id=sid, path="/sandbox/big")
        fits = await call(client, "get_file", session_id=sid, path="/sandbox/fits")
        too_much = await call(client, "put_file", session_id=sid, path="/sandbox/x",
                              content_base64=base64.b64encode(b"y" * 1001).decode())
        bad = await call(client, "put_file", session_id=sid, path="/sandbox/x",
                         content_base64="not base64!")
        missing = await call(client, "get_file", session_id=sid, path="/sandbox/nope")
        return sid, big, fits, too_much, bad, missing
    sid, big, fits, too_much, bad, missing = serve(test, limits=limits)
    assert sid == "files"
    assert big.is_error and "1001 bytes, more than the 1000" in big.content[0].text
    assert fits.structured_content["size"] == 1000
    assert too_much.is_error and "1000 bytes" in too_much.content[0].text
    assert bad.is_error and "not valid base64" in bad.content[0].text
    assert missing.is_error and "/sandbox/nope" in missing.content[0].text


def test_session_limits_ids_and_runtimes():
    async def test(client):
        first = await call(client, "create_session", session_id="a", runtime="node")
        dup = await call(client, "create_session", session_id="a")
        second = await call(client, "create_session", runtime="bash")
        full = await call(client, "create_session")
        bad_id = await call(client, "create_session", session_id="../x")
        node = await call(client, "execute_in_session", session_id="a",
                          code="globalThis.y = 1; console.log(typeof require)")
        await call(client, "destroy_session", session_id="a")
        cobol = await call(client, "create_session", runtime="cobol")
        listed = await call(client, "list_sessions")
        return first, dup, second, full, bad_id, node, cobol, listed
    first, dup, second, full, bad_id, node, cobol, listed = serve(
        test, limits=McpLimits(max_sessions=2))
    assert first.structured_content["sessionId"] == "a" and not second.is_error
    assert dup.is_error and "already exists" in dup.content[0].text
    assert full.is_error and "at most 2 sessions" in full.content[0].text
    assert bad_id.is_error and "session_id" in bad_id.content[0].text
    assert not node.is_error and node.structured_content["exitCode"] == 0
    # a session that could not start holds no slot
    assert cobol.is_error and 'Unknown runtime: "cobol"' in cobol.content[0].text
    assert len(listed.structured_content["sessions"]) == 1


def test_an_idle_session_expires_and_its_sandbox_goes():
    marker = "1414.2135"

    async def test(client):
        sid = (await call(client, "create_session", runtime="bash")).structured_content[
            "sessionId"]
        await call(client, "execute_in_session", session_id=sid,
                   cmd=f"(setsid sleep {marker} > /dev/null 2>&1 &)")
        alive = await until_running(marker)
        listed = await call(client, "list_sessions")
        await asyncio.sleep(1.2)  # the reaper's timer, with no call to trigger a sweep
        left = host_processes_matching(marker)
        after = await call(client, "execute_in_session", session_id=sid, cmd="true")
        return alive, listed, left, after
    alive, listed, left, after = serve(test, limits=McpLimits(session_ttl_s=0.5))
    assert alive and left == []
    assert 0 < listed.structured_content["sessions"][0]["expiresInSeconds"] <= 0.5
    assert after.is_error and "expired" in after.content[0].text


def test_disconnecting_destroys_the_connections_sessions():
    markers = ["1732.0508", "1732.0509", "1732.0510"]

    async def test(client):
        for marker, runtime in zip(markers, ("bash", "python", "node")):
            sid = (await call(client, "create_session", runtime=runtime)).structured_content[
                "sessionId"]
            await call(client, "execute_in_session", session_id=sid,
                       cmd=f"(setsid sleep {marker} > /dev/null 2>&1 &)")
        return [await until_running(marker) for marker in markers]
    assert all(serve(test))
    assert [host_processes_matching(marker) for marker in markers] == [[], [], []]


def test_limits_from_the_config_files_mcp_section():
    limits = McpLimits.from_mapping({"maxSessions": 3, "sessionTtlSeconds": 60,
                                     "maxFileBytes": 4096, "maxTimeoutMs": 1000,
                                     "maxConcurrent": 2})
    assert limits == McpLimits(max_sessions=3, session_ttl_s=60, max_file_bytes=4096,
                               max_timeout_ms=1000, max_concurrent=2)
    assert McpLimits.from_mapping({}) == McpLimits()
    with pytest.raises(InvalidRequest, match="mcp.maxSesions: unknown key"):
        McpLimits.from_mapping({"maxSesions": 3})
    with pytest.raises(InvalidRequest, match="maxFileBytes: expected a positive integer"):
        McpLimits.from_mapping({"maxFileBytes": "1m"})
    with pytest.raises(InvalidRequest, match="sessionTtlSeconds"):
        McpLimits.from_mapping({"sessionTtlSeconds": 0})
    with pytest.raises(InvalidRequest, match="expected a mapping"):
        McpLimits.from_mapping(["maxSessions"])  # type: ignore[arg-type]
