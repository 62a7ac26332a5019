"""The server policy's ``[[mounts]]``: a client mounts only host paths the operator listed,
read-only unless the entry says ``writable``, and a symlink under a listed directory cannot
lead a mount outside it. Against a real ``isol8 serve`` on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from isol8.errors import InvalidRequest
from isol8.server.policy import ServerPolicy

from conftest import host_tempdir
from test_server import Server, running

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")


@pytest.fixture(scope="module")
def granted() -> Iterator[tuple[Server, Path, Path]]:
    with host_tempdir("isol8-grant-ro-") as ro, host_tempdir("isol8-grant-rw-") as rw, \
            host_tempdir("isol8-grant-cfg-") as cfg:
        (ro / "data.txt").write_text("listed\n")
        (ro / "data.txt").chmod(0o644)
        (ro / "escape").symlink_to("/etc")
        rw.chmod(0o777)  # the sandbox's uid writes here, root or rootless
        config = cfg / "policy.json"
        config.write_text(json.dumps({"mounts": [{"source": str(ro)},
                                                 {"source": str(rw), "writable": True}]}))
        with running(config) as srv:
            yield srv, ro, rw


def _mount(source: Path | str, readonly: bool = True) -> dict:
    return {"mounts": [{"source": str(source), "target": "/sandbox/m", "readonly": readonly}]}


def test_a_listed_directory_and_what_is_under_it_mount(granted):
    srv, ro, _ = granted
    status, body = srv.execute("print(open('/sandbox/m/data.txt').read(), end='')",
                               **_mount(ro))
    assert (status, body.get("stdout")) == (200, "listed"), body
    status, body = srv.execute("print(open('/sandbox/m').read(), end='')",
                               **{"mounts": [{"source": str(ro / "data.txt"),
                                              "target": "/sandbox/m"}]})
    assert (status, body.get("stdout")) == (200, "listed"), body


def test_a_read_only_grant_refuses_read_write(granted):
    srv, ro, _ = granted
    status, body = srv.execute("print(1)", **_mount(ro, readonly=False))
    assert status == 400 and body["error"].startswith("options.mounts[0].readonly:"), body


def test_a_writable_grant_mounts_read_write(granted):
    srv, _, rw = granted
    status, body = srv.execute("open('/sandbox/m/out.txt', 'w').write('hi')",
                               **_mount(rw, readonly=False))
    assert status == 200 and body["exitCode"] == 0, body
    assert (rw / "out.txt").read_text() == "hi"


@pytest.mark.parametrize("where", ["/etc", "/var/tmp", "escape"])
def test_paths_outside_the_grants_are_refused(granted, where):
    """``escape`` is a symlink inside a listed directory that points at /etc: the check
    is on the resolved path, which is also the one the engine mounts."""
    srv, ro, _ = granted
    source = ro / where if where == "escape" else where
    status, body = srv.execute("print(open('/sandbox/m/passwd').read())", **_mount(source))
    assert status == 400, body
    assert body["error"].startswith("options.mounts[0].source:"), body
    assert "server policy" in body["error"], body


def test_bad_grants_are_refused_when_the_policy_loads():
    with pytest.raises(InvalidRequest, match=r"mounts\[0\].source: expected an absolute"):
        ServerPolicy.from_mapping({"mounts": [{"source": "relative"}]})
    with pytest.raises(InvalidRequest, match="does not exist"):
        ServerPolicy.from_mapping({"mounts": [{"source": "/nonexistent/isol8"}]})
    with pytest.raises(InvalidRequest, match=r"mounts\[0\]: unknown key"):
        ServerPolicy.from_mapping({"mounts": [{"source": "/usr", "readonly": True}]})
    with pytest.raises(InvalidRequest, match="writable: expected true or false"):
        ServerPolicy.from_mapping({"mounts": [{"source": "/usr", "writable": "yes"}]})


def test_the_servers_own_files_are_never_mountable_even_inside_a_grant():
    """An operator who keeps the key store and the audit log under a granted directory still
    keeps them from tenants: the audit log holds every tenant's code, a writable key store
    would let one mint keys. Read-only mounts of them are refused too."""
    with host_tempdir("isol8-grant-state-") as grant:
        grant.chmod(0o777)
        (grant / "keys").mkdir()
        (grant / "work").mkdir()
        (grant / "work" / "w.txt").write_text("mine\n")
        (grant / "work" / "w.txt").chmod(0o644)
        config = grant / "policy.json"
        config.write_text(json.dumps({"mounts": [{"source": str(grant), "writable": True}]}))
        db, audit = grant / "keys" / "auth.db", grant / "audit.jsonl"
        srv = Server(config, "--auth-db", str(db), "--audit", str(audit))
        try:
            assert srv.execute("print(1)")[0] == 200  # the key store and the log exist now
            for source, readonly, relation, what, path in (
                    (grant, False, "contains", "key store", db),
                    (grant / "keys", True, "contains", "key store", db),
                    (db, True, "is", "key store", db),
                    (audit, False, "is", "audit log", audit),
                    (config, True, "is", "configuration file", config)):
                status, body = srv.execute("print(1)", **_mount(source, readonly))
                assert status == 400, (source, body)
                assert body["error"] == (
                    f"options.mounts[0].source: {source} {relation} this server's own {what} "
                    f"({path}), which no client may mount"), body
            # the rest of the grant still mounts, read-write
            status, body = srv.execute("print(open('/sandbox/m/w.txt').read(), end='')",
                                       **_mount(grant / "work", readonly=False))
            assert (status, body.get("stdout")) == (200, "mine"), body
            # every request was logged, refusals too (a line may land just after its answer)
            deadline = time.monotonic() + 10
            while len(audit.read_text().splitlines()) < 7 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(audit.read_text().splitlines()) == 7
        finally:
            srv.stop()
