"""deploy/k8s, checked offline: every manifest against Kubernetes' own schemas (strict:
an unknown or misspelt field fails), and what isol8 needs of them, which no schema knows:
the readiness probe is `isol8 doctor --ready`, the pod security settings a nested sandbox
needs are all there and nothing more, the master key and the database URL come from the
Secret, the policy is one isol8's own loader accepts, and HAProxy's configuration is the
balancer's (deploy/haproxy/isol8.cfg) with the pods' DNS names, and passes `haproxy -c`.

Run as a script, this module rewrites deploy/k8s/haproxy.cfg from deploy/haproxy/isol8.cfg
(after a change to the latter, test_haproxy_config_is_the_balancers says so).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postgres import running_postgres
from test_doctor_ready import PROBE_CODE

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
BALANCER_CFG = REPO / "deploy" / "haproxy" / "isol8.cfg"
# User namespaces for pods (hostUsers) and procMount: on by default (beta) from 1.33, stable
# from 1.36, the version the manifests are written for.
KUBERNETES_VERSIONS = ("1.33.0", "1.36.0")
KUBERNETES_VERSION = KUBERNETES_VERSIONS[-1]
NAMESPACE = "isol8"
HAPROXY = "/usr/sbin/haproxy"

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _generated_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps kustomization.yaml's configMapGenerator makes (without the hash
    suffix kustomize adds to their names, and to every reference to them)."""
    maps = []
    for generator in _kustomization()["configMapGenerator"]:
        data = {Path(name).name: (K8S / name).read_text() for name in generator["files"]}
        maps.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generator["name"], "namespace": NAMESPACE},
                     "data": data})
    return maps


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in _documents(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _manifests() + _generated_configmaps()
             if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _node_pod() -> dict[str, Any]:
    return _one("StatefulSet", "isol8")["spec"]["template"]["spec"]


def _node_container() -> dict[str, Any]:
    (container,) = _node_pod()["containers"]
    return container


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_manifest_is_valid_in_strict_mode(path, version):
    for doc in _documents(K8S / path):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_generated_configmaps_are_valid(version):
    for doc in _generated_configmaps():
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    # the check above can fail: a field the schema does not know is an error
    statefulset = _one("StatefulSet", "isol8")
    statefulset["spec"]["template"]["spec"]["hostUser"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = _kustomization()
    assert kustomization["namespace"] == NAMESPACE
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    for doc in _manifests():
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE


def test_readiness_probe_is_doctor_ready_and_liveness_not_health():
    container = _node_container()
    probe = container["readinessProbe"]
    assert probe["exec"]["command"] == ["isol8", "doctor", "--ready"]
    # doctor --ready takes ~0.3 s here (tests/test_doctor_ready.py); room for a slow node
    assert probe["timeoutSeconds"] >= 5 and probe["periodSeconds"] >= 10
    # a draining node answers /health 503 and must not be restarted for it
    liveness = container["livenessProbe"]
    assert "httpGet" not in liveness and liveness["tcpSocket"]["port"] == "http"


def test_pod_security_is_what_a_nested_sandbox_needs():
    pod, container = _node_pod(), _node_container()
    assert pod["hostUsers"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    context = container["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["procMount"] == "Unmasked"
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert context["appArmorProfile"] == {"type": "Unconfined"}
    # what is writable on a read-only root: $HOME and /tmp, each an emptyDir
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
    assert mounts[home] in empty and mounts["/tmp"] in empty


def test_balancer_pods_need_nothing_of_the_kind():
    spec = _one("Deployment", "isol8-haproxy")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "procMount" not in container["securityContext"]


def test_namespace_admits_the_nodes_and_reports_beyond_baseline():
    labels = _one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert labels["pod-security.kubernetes.io/warn"] == "baseline"


def test_secrets_are_referenced_never_inlined():
    container = _node_container()
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("ISOL8_API_KEY", "master-key"), ("ISOL8_AUTH_DB", "auth-db")):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "isol8", "key": key}
    assert container["args"][container["args"].index("--auth-db") + 1] == "$(ISOL8_AUTH_DB)"
    # the only Secret in the tree is the example, which kustomization.yaml never applies
    secrets = [d for d in _manifests() if d["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["isol8"]
    assert set(secrets[0]["stringData"]) == {"master-key", "auth-db"}
    assert all("REPLACE" in value for value in secrets[0]["stringData"].values())


def test_policy_configmap_parses_with_isol8s_loader(tmp_path):
    pytest.importorskip("fastapi")  # ServerPolicy lives in the server extra
    from isol8.config import load_config

    container = _node_container()
    config_path = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"]
                 if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in _node_pod()["volumes"] if v["name"] == mount["name"])
    configmap = _one("ConfigMap", volume["configMap"]["name"])
    text = configmap["data"][Path(config_path).name]
    written = tmp_path / "config.toml"
    written.write_text(text)
    config = load_config(path=str(written))
    assert config.warnings == []
    policy = config.server_policy()
    # the node drains within the pod's grace period
    grace = _node_pod()["terminationGracePeriodSeconds"]
    assert policy.capacity.drain_timeout_ms < grace * 1000
    assert "host" not in policy.network_modes and not policy.seccomp_unconfined


def test_nodes_have_stable_names_under_a_headless_service_that_keeps_draining_nodes():
    statefulset = _one("StatefulSet", "isol8")
    service = next(d for d in _documents(K8S / "service.yaml")
                   if d["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_ingress_reaches_haproxy_which_reaches_the_nodes():
    ingress = _one("Ingress", "isol8")
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = _one("Service", backend["name"])
    haproxy = _one("Deployment", "isol8-haproxy")["spec"]["template"]
    assert service["spec"]["selector"].items() <= haproxy["metadata"]["labels"].items()
    (container,) = haproxy["spec"]["containers"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"])
    assert port["targetPort"] in [p["name"] for p in container["ports"]]
    # HAProxy reads the generated config under the name its command gives
    config_file = container["command"][container["command"].index("-f") + 1]
    mount = container["volumeMounts"][0]
    assert Path(config_file).parent == Path(mount["mountPath"])
    volume = haproxy["spec"]["volumes"][0]
    assert Path(config_file).name in _one("ConfigMap", volume["configMap"]["name"])["data"]
    # every server line names a pod of the StatefulSet under the headless Service, and
    # the ring has a slot for each replica
    servers = re.findall(r"ISOL8_NODE(\d+)-([\w.-]+):3000",
                         (K8S / "haproxy.cfg").read_text())
    replicas = _one("StatefulSet", "isol8")["spec"]["replicas"]
    expected = {(str(i + 1), f"isol8-{i}.isol8-nodes.{NAMESPACE}.svc.cluster.local")
                for i in range(replicas)}
    assert set(servers) == expected


# The node's container, run here as its pod would run it: the manifest's command and
# arguments, $(VAR)s expanded from its env (the Secret's values made up, the database a real
# PostgreSQL), the ConfigMap's file where the mount puts it (under a temp dir), on loopback.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, method: str, path: str, key: str, body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _container_argv(container: dict[str, Any], env: dict[str, str], root: Path,
                    port: int) -> list[str]:
    """The container's argv as the kubelet expands it, with the pod's paths under ``root``
    and its listening address on loopback (all traffic here stays on 127.0.0.0/8)."""
    def expand(arg: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)

    argv = [expand(a) for a in container["command"] + container["args"]]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    config = argv.index("--config") + 1
    argv[config] = str(root) + argv[config]
    isol8 = Path(sys.executable).with_name("isol8")
    return ([str(isol8)] if isol8.exists() else [sys.executable, "-m", "isol8"]) + argv[1:]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url


def test_node_container_serves_as_its_pod_runs_it(tmp_path, postgres_url):
    pytest.importorskip("fastapi")
    pytest.importorskip("psycopg")
    container, pod = _node_container(), _node_pod()
    values = {"master-key": secrets.token_hex(32), "auth-db": postgres_url}
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(tmp_path) + item["value"] if item["name"] == "HOME" \
                else item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = values[item["valueFrom"]["secretKeyRef"]["key"]]
        else:  # the downward API: the pod's name
            env[item["name"]] = "isol8-0"
    for mount in container["volumeMounts"]:
        (tmp_path / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    for name, text in _one("ConfigMap", volume["configMap"]["name"])["data"].items():
        (tmp_path / config_mount["mountPath"].lstrip("/") / name).write_text(text)
    port = _free_port()
    url, key = f"http://127.0.0.1:{port}", env["ISOL8_API_KEY"]
    node = subprocess.Popen(_container_argv(container, env, tmp_path, port), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _call(url, "GET", "/health", key)[0] == 200:
                    break
            except OSError:
                pass
            assert node.poll() is None, node.communicate()[0]
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.05)
        # the shared key store and audit log: a key made with the Secret's master key
        status, made = _call(url, "POST", "/auth/keys", key, {"name": "k8s"})
        assert status == 201, made
        status, result = _call(url, "POST", "/execute", made["key"],
                               {"request": {"code": "print(6 * 7)", "runtime": "python"}})
        assert (status, result["stdout"]) == (200, "42"), result
        # the readiness probe, in the pod's environment
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe == ["isol8", "doctor", "--ready"]
        ready = subprocess.run([sys.executable, "-c", PROBE_CODE], capture_output=True, text=True,
                               env=env, timeout=container["readinessProbe"]["timeoutSeconds"])
        assert ready.returncode == 0 and ready.stdout.startswith("ready: "), ready.stdout
        # Kubernetes stops a pod with SIGTERM: the idle node drains and exits in its grace
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=pod["terminationGracePeriodSeconds"])
        assert node.returncode is not None
    finally:
        if node.poll() is None:
            node.kill()
        node.communicate()
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT node FROM audit_log").fetchall()
    assert rows == [("isol8-0",)]


def k8s_haproxy_config(balancer: str) -> str:
    """deploy/haproxy/isol8.cfg made for the cluster: the nodes' defaults become the
    StatefulSet pods' DNS names, resolved at run time by the pod's resolver (a node not
    there yet waits in maintenance), HAProxy listens on :8080, and the header says so."""
    body = balancer[balancer.index("\nglobal\n") + 1:]
    body = re.sub(r"\$\{ISOL8_NODE(\d+)-127\.0\.0\.1:\d+\}",
                  lambda m: f"${{ISOL8_NODE{m.group(1)}-isol8-{int(m.group(1)) - 1}"
                            f".isol8-nodes.{NAMESPACE}.svc.cluster.local:3000}}", body)
    body = body.replace("${ISOL8_LB_BIND-127.0.0.1:3000}", "${ISOL8_LB_BIND-:8080}")
    # the balancer's hint at DNS-based nodes: this file is the worked answer
    body = re.sub(r"\n    # Kubernetes:.*\n(    #.*\n)*", "\n", body)
    body = body.replace("\ndefaults\n", _RESOLVERS + "\ndefaults\n", 1)
    body = body.replace("\ndefaults\n    mode http\n",
                        "\ndefaults\n    mode http\n" + _DEFAULT_SERVER, 1)
    return _K8S_HEADER + "\n" + body


_K8S_HEADER = """\
# HAProxy 2.6 inside the cluster, in front of the isol8 StatefulSet (README "Kubernetes").
#
# Generated from deploy/haproxy/isol8.cfg by `python tests/test_deploy_k8s.py`: the
# routing is that file's, line for line (a session's requests hashed by its id on a
# consistent ring, the rest by least connections, a node out while its /health is not
# 200). What differs is where the nodes are: each is a pod of the StatefulSet isol8, by
# its own DNS name under the headless Service isol8-nodes, resolved again while HAProxy
# runs (a restarted pod has a new address); a node that does not resolve yet waits in
# maintenance instead of stopping HAProxy from starting. Per-pod names, not a
# server-template over the Service's records: every HAProxy replica then builds the same
# ring, node1 always being isol8-0.
#
# Scaling the StatefulSet past three: add node4 (isol8-3) to both backends of
# deploy/haproxy/isol8.cfg and regenerate. Another namespace or cluster domain: set
# ISOL8_NODE1.. in haproxy.yaml.
"""
_RESOLVERS = """
# The cluster's DNS, from the pod's /etc/resolv.conf. A pod's name resolves while it exists
# (the headless Service publishes nodes that are not ready, and ones that drain).
resolvers cluster
    parse-resolv-conf
    hold valid 10s
"""
_DEFAULT_SERVER = """\
    # Every server's address from the cluster's DNS, also after start.
    default-server resolvers cluster init-addr none
"""


def _directives(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_haproxy_config_is_the_balancers():
    # what HAProxy does, line for line; a comment edited in the balancer's file can wait
    # for the next regeneration
    expected = k8s_haproxy_config(BALANCER_CFG.read_text())
    assert _directives((K8S / "haproxy.cfg").read_text()) == _directives(expected), (
        "deploy/k8s/haproxy.cfg is not deploy/haproxy/isol8.cfg made for the cluster: "
        "run `python tests/test_deploy_k8s.py` and review the difference")


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs Debian's haproxy 2.6")
def test_haproxy_config_passes_haproxy_check():
    # the pods' names do not resolve here: with init-addr none HAProxy does not try
    # before it starts, and leaves them to its resolvers
    proc = subprocess.run([HAPROXY, "-c", "-f", str(K8S / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warnings were found" not in proc.stdout, proc.stdout + proc.stderr
    # without it, HAProxy asks the host's resolver at start, and disables what fails
    tried = (K8S / "haproxy.cfg").read_text().replace(" init-addr none", "")
    proc = subprocess.run([HAPROXY, "-c", "-f", "/dev/stdin"], input=tried,
                          capture_output=True, text=True, timeout=60)
    assert "could not resolve address 'isol8-0.isol8-nodes" in proc.stderr


class ClusterDns:
    """The cluster's DNS as HAProxy's resolvers see it, on a free 127.0.0.1 UDP port, in a
    thread: an A query for a name in ``names`` gets its address, an AAAA query for it an
    empty answer (HAProxy then asks for A), any other name NXDOMAIN (a pod not there)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1:at + 1 + query[at]].decode())
            at += 1 + query[at]
        qtype, end = int.from_bytes(query[at + 1:at + 3], "big"), at + 5
        address = self.names.get(".".join(labels).lower())
        answer = b""
        if address is not None and qtype == 1:  # A, TTL 1 s, pointing at the question
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton(address)
        flags = 0x8180 | (0 if address is not None else 3)  # a response; NXDOMAIN
        header = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0)
        return header + query[12:end] + answer

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _pod(index: int) -> str:
    return f"isol8-{index}.isol8-nodes.{NAMESPACE}.svc.cluster.local"


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs Debian's haproxy 2.6")
def test_haproxy_follows_the_pods_as_the_cluster_dns_names_them(tmp_path):
    """HAProxy running deploy/k8s/haproxy.cfg (its resolver the only change: the pod's
    resolv.conf points off this machine) starts while no pod resolves, takes a node once
    its name resolves, and keeps a node's sessions on it when another node joins."""
    pytest.importorskip("fastapi")
    from cluster import call
    from test_server import KEY, Server

    def held(node: Any) -> set[str]:
        status, body = call(node.url, "GET", "/sessions", key=KEY)
        assert status == 200, body
        return {entry["id"] for entry in body["sessions"]}

    text = (K8S / "haproxy.cfg").read_text()
    assert "    parse-resolv-conf\n" in text
    dns = ClusterDns()
    nodes: list[Any] = []
    haproxy = None
    try:
        text = text.replace("    parse-resolv-conf\n",
                            f"    nameserver test 127.0.0.1:{dns.port}\n")
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        nodes = [Server(), Server()]
        port = _free_port()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "ISOL8_LB_BIND": f"127.0.0.1:{port}", "ISOL8_CHECK_INTER": "200ms",
               # the pods' names, as in the cluster; the ports the loopback nodes have
               "ISOL8_NODE1": f"{_pod(0)}:{nodes[0].port}",
               "ISOL8_NODE2": f"{_pod(1)}:{nodes[1].port}",
               "ISOL8_NODE3": f"{_pod(2)}:{_free_port()}"}  # never scheduled
        with open(tmp_path / "haproxy.log", "wb") as log:
            haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def until(check, what: str) -> None:
            deadline = time.monotonic() + 15
            while not check():
                assert haproxy.poll() is None, (tmp_path / "haproxy.log").read_text()
                assert time.monotonic() < deadline, \
                    f"{what}: {(tmp_path / 'haproxy.log').read_text()}"
                time.sleep(0.1)

        def health() -> int:
            try:
                return call(url, "GET", "/health", key=None)[0]
            except OSError:
                return 0

        def run(session: str) -> None:
            status, result = call(url, "POST", "/execute", {
                "sessionId": session, "request": {"code": "print(1)", "runtime": "python"}})
            assert status == 200, result

        until(lambda: health() == 503, "HAProxy never answered while no pod resolved")
        dns.names[_pod(0)] = "127.0.0.1"
        until(lambda: health() == 200, "isol8-0 never joined once its name resolved")
        first = [f"k8s-first-{n}" for n in range(8)]
        for session in first:
            run(session)
        assert held(nodes[0]) == set(first) and held(nodes[1]) == set()
        # isol8-1 is scheduled: new sessions start reaching it, old ones stay where they are
        dns.names[_pod(1)] = "127.0.0.1"
        later = iter(f"k8s-later-{n}" for n in range(1000))

        def lands_on_the_new_node(session: str) -> bool:
            run(session)
            if session in held(nodes[1]):
                return True
            # one that went to isol8-0 (isol8-1 not up yet, or its hash) is ended there,
            # within the per-key session limit
            call(nodes[0].url, "DELETE", f"/session/{session}", key=KEY)
            return False

        until(lambda: lands_on_the_new_node(next(later)),
              "isol8-1 never took a session once its name resolved")
        for session in first:
            run(session)
        assert set(first) <= held(nodes[0]) and not set(first) & held(nodes[1])
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(timeout=10)
        for node in nodes:
            # a node with sessions drains until its deadline: end them first
            if node.proc.poll() is None:
                for session in held(node):
                    call(node.url, "DELETE", f"/session/{session}", key=KEY)
            node.stop()
        dns.close()


if __name__ == "__main__":
    (K8S / "haproxy.cfg").write_text(k8s_haproxy_config(BALANCER_CFG.read_text()))
    print(f"wrote {K8S / 'haproxy.cfg'}", file=sys.stderr)
    if shutil.which("haproxy"):
        sys.exit(subprocess.run(["haproxy", "-c", "-f", str(K8S / "haproxy.cfg")]).returncode)
