"""The server's OpenAPI document against the server itself: schemathesis generates requests
from ``/openapi.json`` (valid and invalid ones) for every HTTP route, and every answer must
be no server error, a status the route declares, in a declared content type, matching the
declared schema. SSE (``/execute/stream``) is left out, as its body is a stream of frames no
schema describes, and WebSocket routes are not in the document.

The server runs with a tiny-timeout policy and small sizes, and the example count is
bounded, so the whole run takes well under a minute; every generated run executes inside a
sandbox."""

from __future__ import annotations

from collections.abc import Iterator
import http.client
import json
import re
import urllib.request
from pathlib import Path

import pytest

from test_server import KEY, Server
from test_server_files import AuthDbServer

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="the test extra is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
POLICY = """\
[ceilings]
timeoutMs = 300
memoryLimit = "128m"
sandboxSize = "16m"
tmpSize = "16m"
maxOutputSize = 65536
[capacity]
maxEngines = 2
maxSessions = 8
maxSessionsPerKey = 8
queueTimeoutMs = 1000
maxBodySize = "1m"
"""
EXAMPLES = 25  # per route, valid and invalid requests mixed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("openapi")
    (home / "policy.toml").write_text(POLICY)
    srv = AuthDbServer(home / "auth.db", "--config", str(home / "policy.toml"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> object:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


# Every HTTP route but SSE's; test_the_document_lists_every_http_route checks that this is
# what the document holds. (Listed here, not read from the document, because pytest needs
# the parameters before any server runs; schemathesis' own lazy loader does not work with
# this pytest.)
OPERATIONS = [
    ("GET", "/health"),
    ("POST", "/execute"),
    ("POST", "/file"),
    ("GET", "/file"),
    ("GET", "/sessions"),
    ("DELETE", "/session/{session_id}"),
    ("POST", "/cleanup"),
    ("GET", "/metrics"),
    ("POST", "/auth/keys"),
    ("GET", "/auth/keys"),
    ("DELETE", "/auth/keys/{key_id}"),
    ("POST", "/auth/login"),
]


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_every_answer_conforms_to_the_document(
    api: object, server: Server, method: str, path: str
) -> None:
    operation = api[path][method]  # type: ignore[index]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: object) -> None:
        case.call_and_validate(
            base_url=server.url,  # type: ignore[attr-defined]
            headers={"Authorization": f"Bearer {KEY}"},
            checks=CHECKS,
        )

    conforms()


def test_the_document_lists_every_http_route_with_its_errors(server: Server) -> None:
    """The parametrized test above only covers what the document lists: so every HTTP route
    of the app must be in it, each with a success schema and its error answers."""
    status, document = server.call("GET", "/openapi.json")
    assert status == 200
    listed = {(method, path) for path, item in document["paths"].items() for method in item}
    expected = {(method.lower(), path) for method, path in OPERATIONS}
    schemas = document["components"]["schemas"]
    # POST /admin/drain is not fuzzed: it would drain the module's server (test_server_drain)
    assert listed == expected | {("post", "/execute/stream"), ("post", "/admin/drain")}, (
        listed ^ expected)
    for method, path in listed:
        answers = document["paths"][path][method]["responses"]
        success = [code for code in answers if code.startswith("2")]
        assert success and all(answers[c].get("content") for c in success), (method, path)
        if path != "/health":
            assert {"401", "403"} <= set(answers), (method, path)
        for code, answer in answers.items():
            if code.startswith("4") or code.startswith("5"):
                error = answer["content"]["application/json"]["schema"]
                error = schemas[error["$ref"].rsplit("/", 1)[1]] if "$ref" in error else error
                assert "error" in error["required"], (method, path, code)
        assert "422" not in answers, (method, path)  # FastAPI's default, replaced by 400
    execute = document["paths"]["/execute"]["post"]
    assert {"400", "409", "410", "413", "429", "503"} <= set(execute["responses"])
    body = execute["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["request"]
    assert {"code", "cmd", "runtime", "timeoutMs"} <= set(
        body["properties"]["request"]["properties"]
    )


def test_the_execute_schema_lists_every_field_the_server_reads() -> None:
    from isol8.server import schema as server_schema, wire

    properties = server_schema.EXECUTE_BODY["properties"]
    assert set(properties["request"]["properties"]) == set(wire.REQUEST_FIELDS)
    assert set(properties["options"]["properties"]) == set(wire.OPTION_FIELDS)
    assert Path(server_schema.__file__).exists()


def oversized(server: Server, method: str, path: str) -> tuple[int, dict]:
    """The answer to a request declaring a body over maxBodySize (1 MiB), sent without it:
    the server answers before reading a body, and one sent whole would race its close (the
    client would see a reset instead of the answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path)
        conn.putheader("Authorization", f"Bearer {KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_every_route_with_a_body_declares_and_answers_413(server: Server) -> None:
    """Bodies over maxBodySize are refused before any route reads them, so every route that
    takes one (every POST) must declare the 413 (the fuzzer never sends a megabyte)."""
    status, document = server.call("GET", "/openapi.json")
    with_body = [
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("post", "put", "patch")
    ]
    assert len(with_body) == 7, with_body
    for method, path in with_body:
        assert "413" in document["paths"][path][method]["responses"], (method, path)
        status, body = oversized(server, method.upper(), path)
        assert status == 413 and body["error"].startswith("body:"), (method, path, body)
    # the request counter, outermost, saw those answers
    metrics = (
        urllib.request.urlopen(
            urllib.request.Request(
                server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
            )
        )
        .read()
        .decode()
    )
    metrics = re.sub(r',node="[^"]*"', "", metrics)  # every series' node label
    assert 'isol8_http_requests_total{route="other",method="POST",code="4xx"}' in metrics


# --- what the fuzzer found, pinned -------------------------------------------------------


@pytest.mark.parametrize("cpu", [5e-324, 0.001, 0.0099, 1e9])
def test_a_cpu_limit_the_kernel_refuses_is_400(server: Server, cpu: float) -> None:
    """cpu.max takes a quota of 1 ms per 100 ms period at least (0.01 cpu): below it the
    write was EINVAL, an OSError the server answered 500 (found by the run above)."""
    status, body = server.execute("print(1)", cpuLimit=cpu)
    if cpu > 1:  # above the policy's ceiling: clamped to it, then runs
        assert status == 200 and body["clamped"][0]["field"] == "options.cpuLimit", body
        return
    assert status == 400 and body["error"].startswith("options.cpuLimit:"), body
    from isol8 import Isol8
    from isol8.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="cpu_limit"):
        Isol8(cpu_limit=cpu)


def test_the_smallest_cpu_limit_runs(server: Server) -> None:
    """0.01 cpu is accepted and applied (this policy's 300 ms deadline leaves it 3 ms of cpu,
    too little for Python to start: the run times out, as it should)."""
    status, body = server.execute("print(1)", cpuLimit=0.01)
    assert status == 200 and body["exitCode"] in (0, 137), body
