"""The kube_proxy role, target cluster, against the REAL kube-apiserver, with the REAL kube-proxy in netns hosts.

The control plane is the session's etcd + kube-apiserver v1.37.2 (tests/harness/kube/fixtures.py), with kube-system's
kube-proxy ConfigMap and DaemonSet as `kubeadm init` creates them. The lab's three hosts are the nodes: each runs
the real kube-proxy as a process (tests/harness/kube/netns_proxy.py). What no process can be here is kubelet and
the DaemonSet controller: tests/harness/kube/kubelet_standin.py stands in for both (it watches the DaemonSet, restarts
each node's kube-proxy with the ConfigMap's config.conf when the pod template changes, and writes the DaemonSet's
status). Everything else is real: the 409 of a concurrent writer, the PATCH of the pod template, /proxyMode, the
rules kube-proxy writes and the ones kube_proxy_leftovers removes, a ClusterIP and a NodePort answering.

The API host is the controller (delegate_to localhost) with the cluster's admin.conf, or a relay
(tests/harness/kube/api_relay.py) in front of the API server to time a concurrent writer or an outage exactly.
Order matters: the tests run top to bottom on one cluster and one lab, like an operator would.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy as kp
from ansible_collections.kubenode.dataplane.plugins.module_utils import _kubeapi
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from tests.harness import ansible_run
from tests.harness.kube import fixtures
from tests.harness.kube.api_relay import ApiRelay
from tests.harness.kube.cluster import PDEATHSIG, Cluster
from tests.harness.kube.kubelet_standin import KubeletStandIn, NetnsNode, restore
from tests.harness.kube.netns_proxy import curl

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "kube_proxy"
ROLE = "kubenode.dataplane.kube_proxy"
CM = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DS = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
MERGE = "Merge the settings into the cluster's kube-proxy ConfigMap"
ROLLOUT = "Restart the kube-proxy DaemonSet and wait for the rollout"
BACKEND_PORT = 8080
BODY = "kube-proxy cluster target backend\n"
# The session's real control plane, made a fixture of this module by its name.
kube_cluster = fixtures.kube_cluster


@pytest.fixture(scope="module")
def kube(kube_cluster: Cluster, netns_lab, tmp_path_factory):
    """The lab's hosts as the cluster's nodes, each running the real kube-proxy that the kubelet stand-in restarts;
    h2 also serves HTTP, the endpoint of a ClusterIP and a NodePort Service."""
    lab, inventory = netns_lab
    work = tmp_path_factory.mktemp("kube-proxy-cluster")
    kubeadm_config = kube_cluster.kube_proxy_config_conf()
    server = kube_cluster.expose_to_lab(lab.switch)
    h2 = lab.hosts[1]
    (work / "index.html").write_text(BODY)
    backend = subprocess.Popen([*PDEATHSIG, "ip", "netns", "exec", h2.netns, sys.executable, "-m", "http.server",
                                str(BACKEND_PORT), "--bind", h2.v4, "--directory", str(work)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = {h.name: NetnsNode(kube_cluster, h, server, work) for h in lab.hosts}
    standin = KubeletStandIn(kube_cluster, nodes)
    services = {}
    try:
        standin.start()
        for name, kind in (("kn-cluster-ip", "ClusterIP"), ("kn-node-port", "NodePort")):
            services[kind] = kube_cluster.create_service(
                name, [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT}], type=kind)
            kube_cluster.create_endpoint_slice(name, [h2.v4], [{"name": "http", "protocol": "TCP", "port": BACKEND_PORT}],
                                               node_name=h2.name)
        yield {"cluster": kube_cluster, "lab": lab, "inventory": inventory, "standin": standin, "nodes": nodes,
               "services": services, "work": work, "kubeadm_config": kubeadm_config}
    finally:
        standin.stop()
        backend.terminate()
        backend.wait(5)
        for svc in services.values():
            name = svc["metadata"]["name"]
            kube_cluster.delete(f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}-kubenode")
            kube_cluster.delete(f"/api/v1/namespaces/default/services/{name}")
        for host in lab.hosts:
            kube_cluster.delete(f"/api/v1/nodes/{host.name}")
        # the next user of the session's cluster (test_kube_real.py) finds kube-system as kubeadm left it
        restore(kube_cluster, kubeadm_config)
        standin.reset_status()
        kube_cluster.unexpose(lab.switch)


def run_role(kube, mode, *, check=False, kubeconfig=None, inventory=None, playbook=None, **extra):
    variables = {
        "kube_proxy_mode": mode,
        "kube_proxy_target": "cluster",
        "kube_proxy_kubeconfig": str(kubeconfig or kube["cluster"].admin_conf),
        "kube_proxy_api_host": "localhost",
        "kube_proxy_rollout_poll_interval": 0.3,
        "kube_proxy_rollout_timeout": 90,
        "kube_proxy_verify_timeout": 20,
        **extra,
    }
    play = playbook or [{"name": "switch kube-proxy's mode", "hosts": "all", "gather_facts": False,
                         "roles": [{"role": ROLE}]}]
    return ansible_run.playbook(play, inventory or kube["inventory"], check=check, diff=check, extra_vars=variables)


def task(run, name: str, host: str | None = None) -> dict:
    """A task of the role, as the callback names it ("<role> : <task>")."""
    return run.task(f"{ROLE} : {name}", host)


def configmap(kube) -> dict:
    return kube["cluster"].api("GET", CM)


def daemonset(kube) -> dict:
    return kube["cluster"].api("GET", DS)


def written(kube) -> tuple[str, int, list]:
    """What proves a run wrote nothing: the ConfigMap's resourceVersion, the DaemonSet's generation, the restarts."""
    return configmap(kube)["metadata"]["resourceVersion"], daemonset(kube)["metadata"]["generation"], \
        list(kube["standin"].restarts)


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def until(predicate, seconds: float = 15.0, interval: float = 0.3):
    """predicate() until it is truthy (kube-proxy applies what it learns in its next sync); the last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def kube_lines(host) -> list[str]:
    """kube-proxy's iptables objects (KUBE-* chains and the rules that name them), in both iptables backends.

    Not KUBE-FIREWALL (filter, "block incoming localnet connections"): the real kube-proxy of iptables mode makes it
    as a duplicate of kubelet's, neither its nftables mode nor kube_proxy_leftovers removes it (by design, see
    MODE_CHAINS in _kube_proxy_node.py), so it stays after a switch on every node."""
    out = []
    for backend in ("nft", "legacy"):
        save = host.run([f"iptables-{backend}-save"], check=False).stdout
        out += [f"{backend}: {line}" for line in save.splitlines() if "KUBE-" in line and "KUBE-FIREWALL" not in line]
    return out


def nft_tables(host) -> list[str]:
    return host.run(["nft", "list", "tables"]).stdout.splitlines()


def assert_serving(kube, mode: str) -> None:
    """On every node: the real kube-proxy answers the mode at /proxyMode, only that mode's objects are there, and the
    ClusterIP (from the node) and the node's NodePort (from the next host) answer through them."""
    lab = kube["lab"]
    cluster_ip = kube["services"]["ClusterIP"]["spec"]["clusterIP"]
    node_port = kube["services"]["NodePort"]["spec"]["ports"][0]["nodePort"]
    for i, host in enumerate(lab.hosts):
        proxy = kube["nodes"][host.name].proxy
        assert proxy is not None and proxy.proc.poll() is None, host.name
        assert proxy.get("/proxyMode") == (200, mode), proxy.tail()
        if mode == "nftables":
            assert "table ip kube-proxy" in nft_tables(host), host.name
            assert kube_lines(host) == [], (host.name, kube_lines(host))
        else:
            assert not any("kube-proxy" in t for t in nft_tables(host)), (host.name, nft_tables(host))
            rule = re.compile(rf"^-A KUBE-SERVICES -d {re.escape(cluster_ip)}/32 .*-j KUBE-SVC-\w+$", re.M)
            assert until(lambda h=host: rule.search(h.run(["iptables-save", "-t", "nat"]).stdout)), host.name
        assert until(lambda h=host: curl(h, f"http://{cluster_ip}/") == (200, BODY)), (host.name, mode)
        outside = lab.hosts[(i + 1) % len(lab.hosts)]
        assert until(lambda h=host, o=outside: curl(o, f"http://{h.v4}:{node_port}/") == (200, BODY)), (host.name, mode)


# ---- the preflight: nothing written on the real server ----

def test_a_node_with_too_old_a_kernel_stops_nftables_before_any_change(kube, tmp_path):
    # kube_proxy_preflight_facts is the role's documented what-if input: h3 reports the release of
    # Debian 11's kernel instead of this machine's, which is below nftables mode's 5.13
    inv = json.loads(Path(kube["inventory"]).read_text())
    inv["all"]["hosts"]["h3"]["kube_proxy_preflight_facts"] = {"kernel_release": "5.10.0-28-amd64"}
    override = tmp_path / "inventory.yml"
    override.write_text(json.dumps(inv))
    before = written(kube)
    run = run_role(kube, "nftables", inventory=override)
    assert run.rc != 0
    msg = task(run, "Stop before any change unless every node passed the preflight")["result"]["msg"]
    assert "cannot run on 1 node(s), so nothing was changed" in msg
    assert "h3: the kernel 5.10.0-28-amd64 is older than 5.13, which kube-proxy's nftables mode needs" in msg
    assert "h1" not in msg and "h2" not in msg
    assert written(kube) == before
    with pytest.raises(AssertionError):
        task(run, MERGE)


def test_ipvs_on_nodes_without_ip_vs_stops_with_a_report_per_node(kube):
    before = written(kube)
    run = run_role(kube, "ipvs")
    assert run.rc != 0
    msg = task(run, "Stop before any change unless every node passed the preflight")["result"]["msg"]
    assert "cannot run on 3 node(s)" in msg
    for host in ("h1", "h2", "h3"):
        assert f"{host}: the kernel" in msg and "has no IP_VS" in msg
    assert written(kube) == before


def test_a_node_with_rules_in_both_iptables_backends_stops_the_run(kube):
    h2 = kube["lab"].hosts[1]
    # a Docker-era legacy rule next to the nft rules the real kube-proxy (iptables mode) keeps there
    h2.run(["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "2375", "-j", "ACCEPT"])
    try:
        before = written(kube)
        run = run_role(kube, "iptables")
        assert run.rc != 0
        msg = task(run, "Stop before any change unless every node passed the preflight")["result"]["msg"]
        assert "cannot run on 1 node(s), so nothing was changed: h2: rules live in both iptables backends (legacy and nft)" in msg
        assert written(kube) == before
    finally:
        h2.run(["iptables-legacy", "-F", "INPUT"])


# ---- the switches ----

def test_switch_to_nftables_check_mode_then_apply_then_nothing(kube):
    assert_serving(kube, "iptables")
    original = configmap(kube)
    before = written(kube)
    # check mode: reported, nothing written (the real server's resourceVersion and generation prove it), no restart
    checked = run_role(kube, "nftables", check=True)
    assert checked.rc == 0, checked.explain()
    merge = task(checked, MERGE)["result"]
    assert merge["changed"] and merge["changes"] == ["$.mode"]
    assert merge["diff"]["before"] == original["data"]["config.conf"]
    assert written(kube) == before

    run = run_role(kube, "nftables")
    assert run.rc == 0, run.explain()
    after = configmap(kube)
    # merged and PUT over the version read: only mode changed, kubeadm's other fields and nulls byte for byte
    assert changed_lines(original["data"]["config.conf"], after["data"]["config.conf"]) == \
        ["-mode: iptables", "+mode: nftables"]
    assert after["data"]["kubeconfig.conf"] == original["data"]["kubeconfig.conf"]
    assert after["metadata"]["annotations"] == original["metadata"]["annotations"]
    assert int(after["metadata"]["resourceVersion"]) > int(original["metadata"]["resourceVersion"])
    assert task(run, MERGE)["result"]["configmap"]["resource_version"] == after["metadata"]["resourceVersion"]
    # the restartedAt patch, accepted by the real server: a new generation, seen by the (stand-in) controller
    ds = daemonset(kube)
    rollout = task(run, ROLLOUT)["result"]
    assert ds["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == rollout["restarted_at"]
    assert ds["metadata"]["generation"] == before[1] + 1 == rollout["generation"]
    assert rollout["rolled_out"] and rollout["updated"] == rollout["desired"] == 3
    assert ds["status"]["observedGeneration"] == ds["metadata"]["generation"]
    assert kube["standin"].restarts[len(before[2]):] == [("h1", "nftables"), ("h2", "nftables"), ("h3", "nftables")]
    for host in ("h1", "h2", "h3"):
        live = task(run, "Wait until kube-proxy reports the wanted mode at /proxyMode", host)["result"]
        assert live["proxy_mode"]["mode"] == "nftables", host
        # what iptables mode left and the real nftables kube-proxy did not clean itself, kube_proxy_leftovers did
        removed = task(run, "Remove what the previous mode left on this node", host)["result"]["removed"]
        assert all("KUBE-" in item for item in removed), removed
    assert_serving(kube, "nftables")

    again = run_role(kube, "nftables")
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.stdout
    assert written(kube)[:2] == (after["metadata"]["resourceVersion"], ds["metadata"]["generation"])
    assert task(again, ROLLOUT)["status"] == "skipped"


def test_a_concurrent_change_is_merged_again_not_overwritten(kube, tmp_path):
    cluster = kube["cluster"]

    def other_writer():
        # someone runs `kubectl edit` between the module's GET (connection 1) and its PUT (connection 2)
        cm = cluster.api("GET", CM)
        cm["data"]["config.conf"] = cm["data"]["config.conf"].replace("  strictARP: false", "  strictARP: true")
        cluster.api("PUT", CM, cm)

    relay = ApiRelay(cluster, before={2: other_writer}).start()
    try:
        run = run_role(kube, "iptables", kubeconfig=relay.kubeconfig(tmp_path / "relay.conf"))
    finally:
        relay.stop()
    assert run.rc == 0, run.explain()
    merge = task(run, MERGE)["result"]
    assert merge["conflicts"] == 1
    text = configmap(kube)["data"]["config.conf"]
    doc = yaml.safe_load(text)
    assert doc["mode"] == "iptables" and doc["ipvs"]["strictARP"] is True
    assert changed_lines(kube["kubeadm_config"], text) == ["-  strictARP: false", "+  strictARP: true"]
    assert_serving(kube, "iptables")


def test_api_server_unreachable_between_the_configmap_and_the_rollout(kube, tmp_path):
    """The API server is gone after the ConfigMap was written (GET, PUT, verifying GET: 3 connections) and before the
    rollout: one sentence says what was done and what was not, and the next run finishes the switch."""
    before = written(kube)
    relay = ApiRelay(kube["cluster"], connections=3).start()
    try:
        run = run_role(kube, "nftables", kubeconfig=relay.kubeconfig(tmp_path / "relay.conf"))
    finally:
        relay.stop()
    assert run.rc != 0
    failed = [r for r in run.results if r["status"] == "failed"]
    assert [r["task"] for r in failed] == [f"{ROLE} : Stop unless the DaemonSet rolled out"], run.stdout
    msg = failed[0]["result"]["msg"]
    assert msg == (f"the ConfigMap kube-system/kube-proxy was changed ($.mode) to select nftables, but the DaemonSet "
                   f"kube-system/kube-proxy was not restarted: the API server {relay.server} cannot be reached: "
                   "[Errno 111] Connection refused; no node was verified or cleaned up, and a run once that is fixed "
                   "finishes the switch"), msg
    assert ". " not in msg   # one sentence; the failed task above is the only one
    # what the real server holds: the ConfigMap written, the DaemonSet not touched, every node still in iptables mode
    rv, generation, restarts = written(kube)
    assert rv != before[0] and yaml.safe_load(configmap(kube)["data"]["config.conf"])["mode"] == "nftables"
    assert (generation, restarts) == before[1:]
    assert_serving(kube, "iptables")

    again = run_role(kube, "nftables")
    assert again.rc == 0, again.explain()
    assert task(again, MERGE)["result"]["changed"] is False
    # the nodes report iptables, so the role restarts the DaemonSet although the ConfigMap is as wanted
    assert task(again, ROLLOUT)["result"]["restarted"]
    assert written(kube)[1] == generation + 1
    assert_serving(kube, "nftables")


@pytest.mark.parametrize("case", ["unknown mode", "wrong type", "not a KubeProxyConfiguration"])
def test_bad_input_is_a_clear_error_and_nothing_is_written(kube, case):
    cluster = kube["cluster"]
    if case == "not a KubeProxyConfiguration":
        cm = configmap(kube)
        saved = cm["data"]["config.conf"]
        cm["data"]["config.conf"] = (FIXTURES / "kubelet-config.yaml").read_text()
        cluster.api("PUT", CM, cm)
    before = written(kube)
    try:
        if case == "unknown mode":
            run = run_role(kube, "ipvx")
            assert run.rc != 0
            assert "kube_proxy_mode" in run.stdout and "ipvx" in run.stdout and "iptables, ipvs, nftables" in run.stdout
        elif case == "wrong type":
            run = run_role(kube, "iptables", kube_proxy_iptables={"masquerade_bit": "fourteen"})
            assert run.rc != 0
            msg = task(run, MERGE)["result"]["msg"]
            assert "masquerade_bit" in msg and "nothing was sent to the host" in msg
        else:
            run = run_role(kube, "iptables")
            assert run.rc != 0
            msg = task(run, MERGE)["result"]["msg"]
            assert ("is not a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1): it holds KubeletConfiguration "
                    "(kubelet.config.k8s.io/v1beta1); the ConfigMap kube-system/kube-proxy was not changed") in msg
        assert written(kube) == before
    finally:
        if case == "not a KubeProxyConfiguration":
            cm = configmap(kube)
            cm["data"]["config.conf"] = saved
            cluster.api("PUT", CM, cm)


def test_playbook_stops_at_the_first_node_that_does_not_verify(kube):
    # the ConfigMap changes but kube-proxy is not restarted: no node can report the new mode
    before = written(kube)
    run = run_role(kube, "iptables", playbook=ROOT / "playbooks" / "kube_proxy_mode.yml", kube_proxy_restart="never",
                   kube_proxy_verify_timeout=2)
    assert run.rc != 0
    failed = [r for r in run.results if r["status"] == "failed"]
    assert [r["host"] for r in failed] == ["h1"], run.stdout
    assert "kube-proxy on h1 reports nftables at http://127.0.0.1:10249/proxyMode" in failed[0]["result"]["msg"]
    assert "not iptables" in failed[0]["result"]["msg"]
    # h2 and h3 were never verified: the play stopped at the first failed node
    verified = {r["host"] for r in run.results if r["task"] == f"{ROLE} : Wait until kube-proxy reports the wanted mode at /proxyMode"}
    assert verified == {"h1"}
    rv, generation, restarts = written(kube)
    assert yaml.safe_load(configmap(kube)["data"]["config.conf"])["mode"] == "iptables" and rv != before[0]
    assert (generation, restarts) == before[1:]
    # and the leftovers of the live mode were left alone
    assert "table ip kube-proxy" in nft_tables(kube["lab"].hosts[0])


# ---- the API client on its own, against the real server (what the unit tier cannot prove) ----

def client_of(path) -> _kubeapi.KubeClient:
    return _kubeapi.KubeClient(_kubeapi.load_kubeconfig(str(path)))


def configmap_source(client, retries=5):
    return kp.ConfigMapSource(client, "kube-system", "kube-proxy", "config.conf", retries)


def test_admin_conf_as_kubeadm_writes_it_reaches_the_api_server(kube):
    creds = _kubeapi.load_kubeconfig(str(kube["cluster"].admin_conf))
    assert creds.server == kube["cluster"].server and creds.context == "kubernetes-admin@kubernetes"
    assert creds.cert_pem.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in creds.key_pem
    client = _kubeapi.KubeClient(creds)
    assert client.request("GET", "/version")["gitVersion"] == "v1.37.2"
    # system:kube-proxy may read Nodes, not Secrets: the real RBAC answers 403, a KubeApiError with its message
    proxy = client_of(kube["cluster"].write_kubeconfig(kube["work"] / "kp.conf", "system:kube-proxy"))
    assert proxy.request("GET", "/api/v1/nodes")["kind"] == "NodeList"
    with pytest.raises(_kubeapi.KubeApiError, match=r"answered 403: .*cannot list resource \"secrets\"") as err:
        proxy.request("GET", "/api/v1/secrets")
    assert err.value.status == 403 and err.value.reason == "Forbidden"
    with pytest.raises(_kubeapi.NotFound):
        client.request("GET", "/api/v1/namespaces/kube-system/configmaps/no-such-thing")


def test_configmap_write_carries_the_resource_version_and_a_stale_one_gets_a_real_409(kube, tmp_path):
    cluster = kube["cluster"]
    client = client_of(cluster.admin_conf)
    read = configmap(kube)
    stale = json.loads(json.dumps(read))
    result = converge(kp.ConfigBackend(configmap_source(client), {"ipvs": {"scheduler": "wrr"}}, lambda m: None),
                      check_mode=False, diff=False)
    # read, write with the resourceVersion read, read back to verify
    assert [(m, s) for m, _p, s in client.log] == [("GET", 200), ("PUT", 200), ("GET", 200)]
    now = configmap(kube)
    assert result["configmap"]["resource_version"] == now["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    assert changed_lines(read["data"]["config.conf"], now["data"]["config.conf"]) == ['-  scheduler: ""', "+  scheduler: wrr"]
    # the version read before is stale now: the real server refuses it
    with pytest.raises(_kubeapi.Conflict) as err:
        client.request("PUT", CM, stale)
    assert err.value.status == 409 and err.value.reason == "Conflict"
    assert "the object has been modified; please apply your changes to the latest version" in str(err.value)
    # put back (by the module itself, an empty scheduler is the kubeadm default)
    converge(kp.ConfigBackend(configmap_source(client), {"ipvs": {"scheduler": ""}}, lambda m: None), False, False)
    assert configmap(kube)["data"]["config.conf"] == read["data"]["config.conf"]


def test_configmap_that_keeps_changing_gives_up_and_says_so(kube, tmp_path):
    cluster = kube["cluster"]
    writes = []

    def other_writer():
        cm = cluster.api("GET", CM)
        cm["data"]["config.conf"] += f"\n# writer {len(writes)}"
        writes.append(cluster.api("PUT", CM, cm)["metadata"]["resourceVersion"])

    original = configmap(kube)["data"]["config.conf"]
    # each PUT of the module (connections 2, 4, 6: GET, PUT, GET, PUT, ...) meets a newer version
    relay = ApiRelay(cluster, before={2: other_writer, 4: other_writer, 6: other_writer}).start()
    try:
        client = client_of(relay.kubeconfig(tmp_path / "relay.conf"))
        with pytest.raises(kp.ConfigError, match=r"kept changing under us \(3 conflicts in a row\); it was left as "
                                                 r"the other writer made it"):
            converge(kp.ConfigBackend(configmap_source(client, retries=2), {"mode": "nftables"}, lambda m: None),
                     False, False)
    finally:
        relay.stop()
    assert [(m, s) for m, _p, s in client.log] == [("GET", 200), ("PUT", 409)] * 3
    now = configmap(kube)
    assert now["metadata"]["resourceVersion"] == writes[-1] and now["data"]["config.conf"].endswith("# writer 2")
    cm = configmap(kube)
    cm["data"]["config.conf"] = original
    cluster.api("PUT", CM, cm)


def test_rollout_check_mode_timeout_and_on_delete_on_the_real_daemonset(kube):
    client = client_of(kube["cluster"].admin_conf)
    generation = daemonset(kube)["metadata"]["generation"]
    checked = kp.rollout(client, "kube-system", "kube-proxy", restart=True, wait=True, timeout=5, interval=0.3,
                         check_mode=True)
    assert checked["changed"] and not checked["restarted"] and [m for m, _p, _s in client.log] == ["GET"]
    assert daemonset(kube)["metadata"]["generation"] == generation
    # the stand-in controller paused: the real server takes the patch, nothing observes it, the wait is bounded
    standin = kube["standin"]
    standin.paused.set()
    try:
        with pytest.raises(kp.DataplaneError, match=r"did not finish within 2 s \(the DaemonSet controller has not yet "
                                                    r"seen the new pod template\)"):
            kp.rollout(client, "kube-system", "kube-proxy", restart=True, wait=True, timeout=2, interval=0.3,
                       check_mode=False)
        assert daemonset(kube)["metadata"]["generation"] == generation + 1
    finally:
        standin.paused.clear()
    standin.settle()
    # an OnDelete DaemonSet is refused before anything changes
    kube["cluster"].api("PATCH", DS, {"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": None}}},
                        content_type="application/merge-patch+json")
    try:
        standin.settle()
        generation = daemonset(kube)["metadata"]["generation"]
        with pytest.raises(kp.DataplaneError, match="uses the OnDelete update strategy"):
            kp.rollout(client, "kube-system", "kube-proxy", restart=True, wait=True, timeout=5, interval=0.3,
                       check_mode=False)
        assert daemonset(kube)["metadata"]["generation"] == generation
    finally:
        rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
        kube["cluster"].api("PATCH", DS, {"spec": {"updateStrategy": rolling}},
                            content_type="application/merge-patch+json")
        standin.settle()


# ---- kube_proxy_leftovers on its own, with rules as kube-proxy's ipvs proxier leaves them ----

def _save(host, backend: str) -> list[str]:
    out = host.run([f"iptables-{backend}-save"]).stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_leftovers_of_iptables_mode_after_the_ipvs_takeover(netns_pair, backend):
    """The rules as kube-proxy writes them in iptables mode, then as its ipvs proxier rewrites its own
    chains when it takes over (without the ipset matches: no ip_set in this kernel), next to Calico's.
    (No real ipvs kube-proxy here: this kernel has no IP_VS; the VM tier runs it.)"""
    lab, inventory = netns_pair
    host = lab.hosts[0]
    restore_ = [f"iptables-{backend}-restore", "--noflush"]
    host.run(restore_, input=(FIXTURES / "kube-proxy-iptables-mode.rules").read_text())
    takeover = "".join(line for line in (FIXTURES / "kube-proxy-ipvs-takeover.rules").read_text().splitlines(True)
                       if "-m set" not in line)
    host.run(restore_, input=takeover)
    host.run(restore_, input=(FIXTURES / "calico-felix.rules").read_text())
    before = _save(host, backend)
    args = {"mode": "ipvs"}

    play = [{"name": "leftovers", "hosts": "h1", "gather_facts": False, "tasks": [
        {"name": "check", "kubenode.dataplane.kube_proxy_leftovers": args, "check_mode": True, "register": "r"},
        {"name": "apply", "kubenode.dataplane.kube_proxy_leftovers": args, "register": "r"},
        {"name": "again", "kubenode.dataplane.kube_proxy_leftovers": args, "register": "r"},
    ]}]
    run = ansible_run.playbook(play, inventory, diff=True)
    assert run.rc == 0, run.explain()
    assert run.task("check")["result"]["changed"] and run.task("check")["result"]["diff"]["after"] == ""
    removed = run.task("apply")["result"]["removed"]
    assert f"ipv4 {backend} nat: chain KUBE-SVC-NPX46M4PTMTKRN6Y" in removed
    assert run.task("again")["result"]["changed"] is False
    after = _save(host, backend)
    stale = re.compile(r"KUBE-(SVC|SVL|SEP|FW|EXT|XLB)-")
    # only removals; no per-service chain of iptables mode is left, ipvs mode's own chains and Calico's cali-* stay
    # byte for byte (counters are not compared: they are all zero here)
    assert set(after) <= set(before) and not any(stale.search(line) for line in after)
    assert [line for line in after if "cali" in line] == [line for line in before if "cali" in line]
    assert any(line.startswith(":cali-") for line in after) and ":KUBE-NODE-PORT" in " ".join(after)
