"""The kube_proxy role, target cluster, against the Kubernetes API STUB with netns hosts as nodes.

Each netns host runs the /proxyMode stand-in as its kube-proxy "pod"; the stub restarts the pods
of the DaemonSet node by node with the ConfigMap's config.conf when the role restarts it. The API
host is the controller itself (delegate_to localhost), where the stub listens on 127.0.0.1.
Order matters: the tests run top to bottom on one lab and one stub, like an operator would.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.harness import ansible_run
from tests.harness.kube_api_stub import CONFIGMAP_PATH, DAEMONSET_PATH, KubeApiStub
from tests.harness.kube_proxy_lab import FIXTURES, NetnsKubeProxy, mode_of

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
ROLE = "kubenode.dataplane.kube_proxy"


@pytest.fixture(scope="module")
def cluster(netns_lab, tmp_path_factory):
    lab, inventory = netns_lab
    work = tmp_path_factory.mktemp("kube-api-stub")
    pods = {h.name: NetnsKubeProxy(h, work / "pods") for h in lab.hosts}
    stub = KubeApiStub(work, {name: pod.start for name, pod in pods.items()}, tick=0.2).start()
    try:
        yield stub, lab, inventory, pods
    finally:
        stub.stop()
        for pod in pods.values():
            pod.stop()


def role_play(**extra) -> list:
    return [{
        "name": "switch kube-proxy's mode",
        "hosts": "all",
        "gather_facts": False,
        "roles": [{"role": "kubenode.dataplane.kube_proxy"}],
        "vars": extra,
    }]


def run_role(stub, inventory, mode, check=False, inventory_override=None, **extra):
    variables = {
        "kube_proxy_mode": mode,
        "kube_proxy_target": "cluster",
        "kube_proxy_kubeconfig": str(stub.kubeconfig),
        "kube_proxy_api_host": "localhost",
        "kube_proxy_rollout_poll_interval": 0.5,
        "kube_proxy_verify_timeout": 10,
    }
    variables.update(extra)
    return ansible_run.playbook(role_play(), inventory_override or inventory, check=check, diff=check,
                                extra_vars=variables)


def task(run, name: str, host: str | None = None) -> dict:
    """A task of the role, as the callback names it ("<role> : <task>")."""
    return run.task(f"{ROLE} : {name}", host)


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def writes(stub) -> tuple[int, int]:
    return stub.calls("PUT", CONFIGMAP_PATH), stub.calls("PATCH", DAEMONSET_PATH)


def test_a_node_with_too_old_a_kernel_stops_nftables_before_any_change(cluster, tmp_path):
    stub, lab, inventory, _pods = cluster
    # kube_proxy_preflight_facts is the role's documented what-if input: h3 reports the release of
    # Debian 11's kernel instead of this machine's (6.18), which is below nftables mode's 5.13
    inv = json.loads(Path(inventory).read_text())
    inv["all"]["hosts"]["h3"]["kube_proxy_preflight_facts"] = {"kernel_release": "5.10.0-28-amd64"}
    override = tmp_path / "inventory.yml"
    override.write_text(json.dumps(inv))
    before_text, before_writes = stub.config_text(), writes(stub)
    run = run_role(stub, inventory, "nftables", inventory_override=override)
    assert run.rc != 0
    verdict = task(run, "Stop before any change unless every node passed the preflight")
    msg = verdict["result"]["msg"]
    assert "cannot run on 1 node(s), so nothing was changed" in msg
    assert "h3: the kernel 5.10.0-28-amd64 is older than 5.13, which kube-proxy's nftables mode needs" in msg
    assert "h1" not in msg and "h2" not in msg
    assert writes(stub) == before_writes and stub.config_text() == before_text and stub.restarts == 0
    with pytest.raises(AssertionError):
        task(run, "Merge the settings into the cluster's kube-proxy ConfigMap")


def test_ipvs_on_nodes_without_ip_vs_stops_with_a_report_per_node(cluster):
    stub, _lab, inventory, _pods = cluster
    before_writes = writes(stub)
    run = run_role(stub, inventory, "ipvs")
    assert run.rc != 0
    msg = task(run, "Stop before any change unless every node passed the preflight")["result"]["msg"]
    assert "cannot run on 3 node(s)" in msg
    for host in ("h1", "h2", "h3"):
        assert f"{host}: the kernel" in msg and "has no IP_VS" in msg
    # the preflight names the ipset program only where it is missing (make deps installs it for iptables_ruleset)
    assert ("ipset program is not installed" in msg) is (shutil.which("ipset", path="/usr/sbin:/sbin:/usr/bin") is None)
    assert writes(stub) == before_writes and stub.restarts == 0


def test_a_node_with_rules_in_both_iptables_backends_stops_the_run(cluster):
    stub, lab, inventory, _pods = cluster
    h2 = lab.hosts[1]
    # a Docker-era legacy rule next to nft rules: the situation iptables_backend calls mixed
    h2.run(["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "2375", "-j", "ACCEPT"])
    h2.run(["iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
    try:
        before_writes = writes(stub)
        run = run_role(stub, inventory, "iptables")
        assert run.rc != 0
        msg = task(run, "Stop before any change unless every node passed the preflight")["result"]["msg"]
        assert "cannot run on 1 node(s), so nothing was changed: h2: rules live in both iptables backends (legacy and nft)" in msg
        assert writes(stub) == before_writes and stub.restarts == 0
    finally:
        h2.run(["iptables-legacy", "-F", "INPUT"])
        h2.run(["iptables-nft", "-F", "INPUT"])


def test_switch_to_nftables_check_mode_then_apply_then_nothing(cluster):
    stub, _lab, inventory, pods = cluster
    original = stub.config_text()
    # check mode: reported, nothing written, no restart
    checked = run_role(stub, inventory, "nftables", check=True)
    assert checked.rc == 0, checked.explain()
    merge = task(checked, "Merge the settings into the cluster's kube-proxy ConfigMap")["result"]
    assert merge["changed"] and merge["changes"] == ["$.mode"]
    assert writes(stub) == (0, 0) and stub.config_text() == original

    run = run_role(stub, inventory, "nftables")
    assert run.rc == 0, run.explain()
    assert changed_lines(original, stub.config_text()) == ['-mode: ""', "+mode: nftables"]
    assert writes(stub) == (1, 1) and stub.restarts == 1
    rollout = task(run, "Restart the kube-proxy DaemonSet and wait for the rollout")["result"]
    assert rollout["rolled_out"] and rollout["updated"] == rollout["desired"] == 3
    for host in ("h1", "h2", "h3"):
        live = task(run, "Wait until kube-proxy reports the wanted mode at /proxyMode", host)["result"]
        assert live["proxy_mode"]["mode"] == "nftables", host
        assert mode_of(stub.pod_starts[host][-1]) == "nftables"
        assert pods[host].proc.poll() is None

    again = run_role(stub, inventory, "nftables")
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.stdout
    assert writes(stub) == (1, 1) and stub.restarts == 1
    assert task(again, "Restart the kube-proxy DaemonSet and wait for the rollout")["status"] == "skipped"


def test_a_concurrent_change_is_merged_again_not_overwritten(cluster):
    stub, _lab, inventory, _pods = cluster

    def other_writer(text: str) -> str:
        # someone runs `kubectl edit` between our GET and our PUT
        return text.replace("  strictARP: false", "  strictARP: true")

    stub.inject_conflicts(other_writer)
    puts_before = stub.calls("PUT", CONFIGMAP_PATH)
    run = run_role(stub, inventory, "iptables")
    assert run.rc == 0, run.explain()
    merge = task(run, "Merge the settings into the cluster's kube-proxy ConfigMap")["result"]
    assert merge["conflicts"] == 1
    doc = yaml.safe_load(stub.config_text())
    assert doc["mode"] == "iptables" and doc["ipvs"]["strictARP"] is True
    statuses = [s for m, p, s in stub.requests if m == "PUT" and p == CONFIGMAP_PATH][puts_before:]
    assert statuses == [409, 200]
    assert stub.restarts == 2


@pytest.mark.parametrize("case", ["unknown mode", "wrong type", "not a KubeProxyConfiguration"])
def test_bad_input_is_a_clear_error_and_nothing_is_written(cluster, case):
    stub, _lab, inventory, _pods = cluster
    before_text, before_writes, before_restarts = stub.config_text(), writes(stub), stub.restarts
    if case == "unknown mode":
        run = run_role(stub, inventory, "ipvx")
        assert run.rc != 0
        assert "kube_proxy_mode" in run.stdout and "ipvx" in run.stdout and "iptables, ipvs, nftables" in run.stdout
    elif case == "wrong type":
        run = run_role(stub, inventory, "iptables", kube_proxy_iptables={"masquerade_bit": "fourteen"})
        assert run.rc != 0
        msg = task(run, "Merge the settings into the cluster's kube-proxy ConfigMap")["result"]["msg"]
        assert "masquerade_bit" in msg and "nothing was sent to the host" in msg
    else:
        stub.set_config_text((FIXTURES / "kubelet-config.yaml").read_text())
        try:
            run = run_role(stub, inventory, "iptables")
            assert run.rc != 0
            msg = task(run, "Merge the settings into the cluster's kube-proxy ConfigMap")["result"]["msg"]
            assert ("is not a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1): it holds KubeletConfiguration "
                    "(kubelet.config.k8s.io/v1beta1); the ConfigMap kube-system/kube-proxy was not changed") in msg
            assert stub.calls("PUT", CONFIGMAP_PATH) == before_writes[0]
        finally:
            stub.set_config_text(before_text)
        return
    assert stub.config_text() == before_text and writes(stub) == before_writes and stub.restarts == before_restarts


def test_playbook_stops_at_the_first_node_that_does_not_verify(cluster):
    stub, _lab, inventory, _pods = cluster
    # the ConfigMap changes but kube-proxy is not restarted: no node can report the new mode
    run = ansible_run.playbook(ROOT / "playbooks" / "kube_proxy_mode.yml", inventory, extra_vars={
        "kube_proxy_mode": "nftables", "kube_proxy_target": "cluster", "kube_proxy_kubeconfig": str(stub.kubeconfig),
        "kube_proxy_api_host": "localhost", "kube_proxy_restart": "never", "kube_proxy_verify_timeout": 2})
    assert run.rc != 0
    failed = [r for r in run.results if r["status"] == "failed"]
    assert [r["host"] for r in failed] == ["h1"], run.stdout
    assert "kube-proxy on h1 reports iptables at http://127.0.0.1:10249/proxyMode" in failed[0]["result"]["msg"]
    assert "not nftables" in failed[0]["result"]["msg"]
    # h2 and h3 were never verified: the play stopped at the first failed node
    verified = {r["host"] for r in run.results if r["task"] == f"{ROLE} : Wait until kube-proxy reports the wanted mode at /proxyMode"}
    assert verified == {"h1"}
    assert yaml.safe_load(stub.config_text())["mode"] == "nftables" and stub.restarts == 2


def _save(host, backend: str) -> list[str]:
    out = host.run([f"iptables-{backend}-save"]).stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_leftovers_of_iptables_mode_after_the_ipvs_takeover(netns_pair, backend):
    """The rules as kube-proxy writes them in iptables mode, then as its ipvs proxier rewrites its own
    chains when it takes over (without the ipset matches: no ip_set in this kernel), next to Calico's."""
    lab, inventory = netns_pair
    host = lab.hosts[0]
    restore = [f"iptables-{backend}-restore", "--noflush"]
    host.run(restore, input=(FIXTURES / "kube-proxy-iptables-mode.rules").read_text())
    takeover = "".join(line for line in (FIXTURES / "kube-proxy-ipvs-takeover.rules").read_text().splitlines(True)
                       if "-m set" not in line)
    host.run(restore, input=takeover)
    host.run(restore, input=(FIXTURES / "calico-felix.rules").read_text())
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
    assert len(removed) == 9 and f"ipv4 {backend} nat: chain KUBE-SVC-NPX46M4PTMTKRN6Y" in removed
    assert run.task("again")["result"]["changed"] is False
    after = _save(host, backend)
    stale = re.compile(r"KUBE-(SVC|SVL|SEP|FW|EXT|XLB)-")
    # everything that is not a stale chain or a jump into one is byte-identical: ipvs mode's chains,
    # the other KUBE-* chains, Calico's cali-* chains (counters are not compared: they are all zero here)
    assert after == [line for line in before if not stale.search(line)]
    assert any(line.startswith(":cali-") for line in after) and ":KUBE-NODE-PORT" in " ".join(after)
