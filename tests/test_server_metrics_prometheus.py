"""deploy/prometheus/isol8.yml as Prometheus reads it, against real `isol8 serve` nodes: the
job's path, scheme and key file scrape each node, an API key's place is refused, and the
series of three nodes stay apart by their node label."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_server import KEY, Server

pytest.importorskip("fastapi", reason="the server extra (isol8[server]) is not installed")
yaml = pytest.importorskip("yaml")

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "isol8.yml"
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)")


def job() -> dict:
    (scrape,) = yaml.safe_load(CONFIG.read_text())["scrape_configs"]
    return scrape


def scrape_as_prometheus(scrape: dict, target: str, key_file: Path) -> str:
    """One scrape the way the job describes it: its scheme, path and authorization."""
    auth = scrape["authorization"]
    request = urllib.request.Request(f"{scrape['scheme']}://{target}{scrape['metrics_path']}")
    request.add_header("Authorization", f"{auth['type']} {key_file.read_text().strip()}")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def test_the_shipped_job_scrapes_three_local_nodes_with_the_key_file():
    scrape = job()
    assert scrape["job_name"] == "isol8"
    assert (scrape["scheme"], scrape["metrics_path"]) == ("http", "/metrics")
    assert scrape["authorization"]["type"] == "Bearer"
    assert scrape["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in scrape["authorization"]  # a key in the file, never inline
    (static,) = scrape["static_configs"]
    assert static["targets"] == ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"]


def test_three_nodes_scraped_by_the_job_stay_apart(tmp_path):
    scrape = job()
    key_file = tmp_path / "isol8-master-key"
    key_file.write_text(KEY + "\n")
    nodes = []
    try:
        for name in ("node-1", "node-2", "node-3"):
            nodes.append(Server(None, "--node", name))
        series: set[tuple[str, str]] = set()
        for name, node in zip(("node-1", "node-2", "node-3"), nodes):
            text = scrape_as_prometheus(scrape, f"127.0.0.1:{node.port}", key_file)
            lines = [line for line in text.splitlines() if not line.startswith("#")]
            for line in lines:
                match = _SAMPLE.fullmatch(line)
                assert match and f'node="{name}"' in (match[2] or ""), line
                assert (match[1], match[2]) not in series, f"a series of two nodes: {line}"
                series.add((match[1], match[2]))
            assert f'isol8_draining{{node="{name}"}} 0.0' in lines
        key_file.write_text("not-the-master-key\n")
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape_as_prometheus(scrape, f"127.0.0.1:{nodes[0].port}", key_file)
        assert refused.value.code == 403
    finally:
        for node in nodes:
            node.stop()
