"""Several real ``isol8 serve`` nodes behind a real HAProxy running the shipped
deploy/haproxy/isol8.cfg, on free loopback ports, for the cluster tests and benchmark.

The nodes are tests/test_server.py's ``Server`` (the same CLI, loopback-only); HAProxy gets
their addresses through the config's environment variables, exactly as an operator would
give them, and logs to a file the tests read to know when it took a node out. Everything
is stopped when the ``running_cluster`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from test_server import KEY, Server, _free_port, call

HAPROXY = "/usr/sbin/haproxy"
CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "isol8.cfg"
# The config has three node slots (ISOL8_NODE1..3).
NODES = 3
# How often HAProxy checks /health here; two failures take a node out (fall 2).
CHECK_INTER_MS = 200


class Balancer:
    """HAProxy in the foreground on a free loopback port, in front of ``nodes``."""

    def __init__(self, nodes: list[Server], log: Path) -> None:
        if len(nodes) != NODES:
            raise ValueError(f"the shipped config has {NODES} node slots, got {len(nodes)}")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "ISOL8_LB_BIND": f"127.0.0.1:{self.port}",
               "ISOL8_CHECK_INTER": f"{CHECK_INTER_MS}ms"}
        for number, node in enumerate(nodes, 1):
            env[f"ISOL8_NODE{number}"] = f"127.0.0.1:{node.port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"haproxy did not start: {log.read_text()}")
            time.sleep(0.05)

    def _up(self) -> bool:
        """Listening and forwarding (the nodes were ready before HAProxy started)."""
        try:
            return call(self.url, "GET", "/health", key=None)[0] == 200
        except OSError:
            return False

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Until HAProxy's log has a line containing ``text`` (e.g. "node2 is DOWN")."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy never logged {text!r}: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    """The nodes, the balancer in front of them, and where a session lives."""

    def __init__(self, nodes: list[Server], balancer: Balancer) -> None:
        self.nodes, self.balancer, self.url = nodes, balancer, balancer.url

    def call(self, method: str, path: str, body: object = None, *,
             key: str | None = KEY) -> tuple[int, dict]:
        """One request through the balancer."""
        return call(self.url, method, path, body, key=key)

    def holders(self, session: str, key: str = KEY) -> list[int]:
        """The indices of the live nodes whose own ``GET /sessions`` lists ``session``."""
        found = []
        for index, node in enumerate(self.nodes):
            if node.proc.poll() is not None:
                continue
            status, body = call(node.url, "GET", "/sessions", key=key)
            assert status == 200, body
            if any(entry["id"] == session for entry in body["sessions"]):
                found.append(index)
        return found




def policy_file(directory: Path, capacity: dict[str, object]) -> Path:
    """A server policy (JSON) with these ``[capacity]`` settings, for every node."""
    path = directory / "policy.json"
    path.write_text(json.dumps({"capacity": capacity}))
    return path


@contextlib.contextmanager
def running_cluster(directory: Path, *flags: str,
                    policy: Path | None = None) -> Iterator[Cluster]:
    """Three nodes started with ``flags`` (e.g. ``--auth-db URL``) and ``policy``, HAProxy
    in front; all stopped after (a node already killed by the test included)."""
    nodes: list[Server] = []
    balancer: Balancer | None = None
    try:
        for number in range(1, NODES + 1):  # named as HAProxy names them
            nodes.append(Server(policy, "--node", f"node{number}", *flags))
        balancer = Balancer(nodes, directory / "haproxy.log")
        yield Cluster(nodes, balancer)
    finally:
        if balancer is not None:
            balancer.stop()
        for node in nodes:  # all at once: each may wait for its runs (a drain)
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            node.stop()
