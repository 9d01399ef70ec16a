"""The real kube-proxy (v1.37.2, built from source) in netns hosts, against a real API server.

One lab of three hosts: h1 runs kube-proxy in iptables mode, h3 in nftables mode, h2 is the endpoint (a Python
http.server on 198.18.0.2:8080). The control plane is the session's real etcd + kube-apiserver on 127.0.0.1,
reached from the lab through a forwarder at 198.18.0.254 on the lab's bridge. The tests create what a
controller-manager would (an EndpointSlice per Service) and what kubelet would (the Node objects): nothing here
starts pods. Each mode: kube-proxy starts from kubeadm's config.conf, answers /healthz and /proxyMode, writes its
rules (its chains or its table are checked), a ClusterIP and a NodePort answer through them from the node itself
and the NodePort from another host, and kube-proxy stops on SIGTERM.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, TypeVar

import pytest

from tests.harness.kube import fixtures, kubeadm_addon
from tests.harness.kube.cluster import PDEATHSIG, Cluster, kube_proxy_addon
from tests.harness.kube.netns_proxy import KubeProxy, curl, start_kube_proxy
from tests.harness.netns_hosts import Host, Lab

pytestmark = pytest.mark.netns

BACKEND_PORT = 8080
BODY = "kubenode backend h2\n"
CLUSTER_IP_SERVICE = "kn-web"
NODE_PORT_SERVICE = "kn-web-np"
# Which host runs kube-proxy in which mode; the other one is the outside client of its NodePort.
PROXY_HOST = {"iptables": 0, "nftables": 2}
T = TypeVar("T")
# The session's real control plane (tests/harness/kube/fixtures.py), made a fixture of this module by its name.
kube_cluster = fixtures.kube_cluster


def eventually(check: Callable[[], T], seconds: float = 10.0, interval: float = 0.2) -> T:
    """check() until it stops raising AssertionError: kube-proxy applies what it learns in its next sync."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


@pytest.fixture(scope="module")
def kube_lab(kube_cluster: Cluster, tmp_path_factory) -> Iterator[Dict]:
    if os.geteuid() != 0:
        pytest.skip("netns hosts need root")
    work = tmp_path_factory.mktemp("kube-real")
    lab = Lab.create(3)
    atexit.register(lab.destroy)
    backend = None
    try:
        server = kube_cluster.expose_to_lab(lab.switch)
        h2 = lab.hosts[1]
        site = work / "site"
        site.mkdir()
        (site / "index.html").write_text(BODY)
        backend = subprocess.Popen([*PDEATHSIG, "ip", "netns", "exec", h2.netns, sys.executable, "-m", "http.server",
                                    str(BACKEND_PORT), "--bind", h2.v4, "--directory", str(site)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(lambda: _assert_equal(curl(h2, f"http://{h2.v4}:{BACKEND_PORT}/"), (200, BODY)))
        port = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT}]
        slice_port = [{"name": "http", "protocol": "TCP", "port": BACKEND_PORT}]
        services = {}
        for name, kind in ((CLUSTER_IP_SERVICE, "ClusterIP"), (NODE_PORT_SERVICE, "NodePort")):
            services[name] = kube_cluster.create_service(name, port, type=kind)
            kube_cluster.create_endpoint_slice(name, [h2.v4], slice_port, node_name=h2.name)
        yield {"lab": lab, "server": server, "services": services, "work": work}
    finally:
        for name in (CLUSTER_IP_SERVICE, NODE_PORT_SERVICE):
            kube_cluster.delete(f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}-kubenode")
            kube_cluster.delete(f"/api/v1/namespaces/default/services/{name}")
        for host in lab.hosts:
            kube_cluster.delete(f"/api/v1/nodes/{host.name}")
        if backend is not None:
            backend.terminate()
            backend.wait(5)
        kube_cluster.unexpose(lab.switch)
        lab.destroy()


def _assert_equal(actual, expected) -> None:
    assert actual == expected


def rules_of(host: Host, mode: str) -> str:
    if mode == "iptables":
        return host.run(["iptables-save", "-t", "nat"]).stdout
    return host.run(["nft", "list", "table", "ip", "kube-proxy"], check=False).stdout


def assert_rules(mode: str, rules: str, cluster_ip: str, node_port: int, endpoint: str) -> None:
    """kube-proxy's own objects for the two Services, in the words iptables-save / nft print them."""
    if mode == "iptables":
        assert ":KUBE-SERVICES - [0:0]" in rules and ":KUBE-NODEPORTS - [0:0]" in rules, rules
        assert re.search(rf"^-A KUBE-SERVICES -d {re.escape(cluster_ip)}/32 -p tcp .*--dport 80 -j KUBE-SVC-\w+$",
                         rules, re.M), rules
        assert re.search(rf"^-A KUBE-NODEPORTS -p tcp .*--dport {node_port} -j KUBE-EXT-\w+$", rules, re.M), rules
        assert re.search(rf"^-A KUBE-SEP-\w+ -p tcp .*-j DNAT --to-destination {re.escape(endpoint)}$", rules, re.M), rules
    else:
        assert rules.startswith("table ip kube-proxy {"), rules
        assert re.search(rf"{re.escape(cluster_ip)} \. tcp \. 80 : goto service-\w+-default/{CLUSTER_IP_SERVICE}/tcp/http",
                         rules), rules
        assert re.search(rf"tcp \. {node_port} : goto external-\w+-default/{NODE_PORT_SERVICE}/tcp/http", rules), rules
        assert f"dnat to {endpoint}" in rules, rules


@pytest.fixture
def proxy_in(kube_cluster: Cluster, kube_lab) -> Iterator[Callable[[str], KubeProxy]]:
    started = []

    def start(mode: str) -> KubeProxy:
        host = kube_lab["lab"].hosts[PROXY_HOST[mode]]
        proxy = start_kube_proxy(kube_cluster, host, mode, kube_lab["server"], kube_lab["work"])
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_real_kube_proxy_serves_cluster_ip_and_node_port(mode, kube_cluster, kube_lab, proxy_in):
    lab: Lab = kube_lab["lab"]
    cluster_ip = kube_lab["services"][CLUSTER_IP_SERVICE]["spec"]["clusterIP"]
    node_port = kube_lab["services"][NODE_PORT_SERVICE]["spec"]["ports"][0]["nodePort"]
    endpoint = f"{lab.hosts[1].v4}:{BACKEND_PORT}"
    started = time.monotonic()

    proxy = proxy_in(mode)
    node = proxy.host
    healthy_after = proxy.wait_healthy()
    assert proxy.get("/proxyMode") == (200, mode)
    assert proxy.get("/livez")[0] == 200

    eventually(lambda: assert_rules(mode, rules_of(node, mode), cluster_ip, node_port, endpoint))
    # Only the mode's own objects: no iptables chains from an nftables kube-proxy, and the other way round.
    other = rules_of(node, "nftables" if mode == "iptables" else "iptables")
    assert "KUBE-SERVICES" not in other and "table ip kube-proxy" not in other, other

    # Through the rules: the node itself to the ClusterIP and to its own NodePort ...
    assert curl(node, f"http://{cluster_ip}/") == (200, BODY)
    assert curl(node, f"http://{node.v4}:{node_port}/") == (200, BODY)
    # ... and a client on another host to the node's NodePort (DNAT, forwarding and masquerade on the node).
    outside = lab.hosts[2 if PROXY_HOST[mode] == 0 else 0]
    assert curl(outside, f"http://{node.v4}:{node_port}/") == (200, BODY)

    # kube-proxy has no handler for SIGTERM: it ends by the signal, at once, as a pod's kube-proxy does.
    assert proxy.stop() == -signal.SIGTERM, proxy.tail()
    assert proxy.get("/healthz")[0] == 0
    print(f"{mode}: healthy {healthy_after:.1f} s after start, whole check {time.monotonic() - started:.1f} s")


def test_kube_system_holds_kubeadm_kube_proxy_addon(kube_cluster):
    """The objects `kubeadm init` makes for kube-proxy, as the API server stored them from kubeadm's own output."""
    wanted = {d["kind"]: d for d in kube_proxy_addon(kube_cluster.ports.api)}
    ns = "/api/v1/namespaces/kube-system"
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    cm = kube_cluster.api("GET", f"{ns}/configmaps/kube-proxy")
    assert cm["data"] == wanted["ConfigMap"]["data"]
    assert set(cm["data"]) == {"config.conf", "kubeconfig.conf"}
    # kubeadm's mark of a generated (not user-supplied) configuration, over the data as stored.
    assert cm["metadata"]["annotations"][kubeadm_addon.CONFIGMAP_HASH_ANNOTATION] == \
        kubeadm_addon.config_map_hash(cm["data"])
    assert f"server: {kube_cluster.server}" in cm["data"]["kubeconfig.conf"]
    assert "kind: KubeProxyConfiguration" in cm["data"]["config.conf"] and "mode: iptables" in cm["data"]["config.conf"]

    ds = kube_cluster.api("GET", "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")
    pod = ds["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.k8s.io/kube-proxy:v1.37.2"
    assert pod["containers"][0]["command"] == [
        "/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"]
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}] and pod["serviceAccountName"] == "kube-proxy"
    assert [v["name"] for v in pod["volumes"]] == ["kube-proxy", "xtables-lock", "lib-modules"]
    assert pod["volumes"][0]["configMap"]["name"] == "kube-proxy"
    # No kubelet, no controller-manager: the DaemonSet is an object that nothing acts on.
    assert ds["status"].get("desiredNumberScheduled", 0) == 0

    assert kube_cluster.api("GET", f"{ns}/serviceaccounts/kube-proxy")["metadata"]["name"] == "kube-proxy"
    crb = kube_cluster.api("GET", f"{rbac}/clusterrolebindings/kubeadm:node-proxier")
    assert crb["roleRef"]["name"] == "system:node-proxier"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "kube-proxy", "namespace": "kube-system"}]
    role = kube_cluster.api("GET", f"{rbac}/namespaces/kube-system/roles/kube-proxy")
    assert role["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["kube-proxy"]}]
    rb = kube_cluster.api("GET", f"{rbac}/namespaces/kube-system/rolebindings/kube-proxy")
    assert rb["subjects"] == [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                               "name": "system:bootstrappers:kubeadm:default-node-token"}]
