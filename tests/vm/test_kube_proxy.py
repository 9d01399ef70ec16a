"""kube_proxy on the real-kernel VM, in one session: the config module on a kubeadm file, the
cluster target switching the Kubernetes API STUB's cluster from iptables to ipvs with the VM as
its node, then the file target switching the VM's kube-proxy service back to iptables.

kube-proxy on the VM is the /proxyMode STAND-IN (tests/harness/proxymode_standin.py) run as
kube-proxy.service; when the stub restarts the "pod" it also programs the rules kube-proxy
programs in that mode (kube_proxy_lab.VmKubeProxy), so a switch leaves exactly what a real switch
leaves: iptables mode's per-service chains after going to ipvs, kube-ipvs0 and IPVS services
after leaving ipvs. Order matters: the tests run top to bottom on one VM.
"""

from __future__ import annotations

import difflib
import re
import shlex
import subprocess
import pytest
import yaml

from tests.harness import ansible_run
from tests.harness.kube_api_stub import CONFIGMAP_PATH, DAEMONSET_PATH, KubeApiStub
from tests.harness.kube_proxy_lab import FIXTURES, VM_CONFIG, VmKubeProxy

pytestmark = pytest.mark.vm

ROLE = "kubenode.dataplane.kube_proxy"
STALE = re.compile(r"KUBE-(SVC|SVL|SEP|FW|EXT|XLB)-")
KUBEADM = "/etc/kubernetes/kubeadm-config.yaml"


def task(run, name, host=None):
    return run.task(f"{ROLE} : {name}", host)


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def ruleset(machine) -> list[str]:
    """iptables-nft-save without its comments and counters: the lines that must stay byte-identical."""
    out = machine.ssh("iptables-nft-save").stdout
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#")]


def ipvs(machine) -> list[str]:
    return sorted(machine.ssh("ipvsadm", "-Sn").stdout.splitlines())


def put_file(machine, path: str, text: str) -> None:
    # ssh hands the remote shell one command line
    quoted = shlex.quote(path)
    subprocess.run(machine.ssh_argv(f"mkdir -p $(dirname {quoted}) && cat > {quoted}"), input=text, text=True,
                   check=True, capture_output=True, timeout=60)


def sha(machine, path: str) -> str:
    return machine.ssh("sha256sum", path).stdout.split()[0]


@pytest.fixture(scope="module")
def kube_proxy_vm(vm):
    machine, inventory = vm
    pod = VmKubeProxy(machine)
    pod.install()
    return machine, inventory, pod


def test_config_module_on_a_kubeadm_file(kube_proxy_vm):
    machine, inventory, _pod = kube_proxy_vm
    original = (FIXTURES / "kubeadm-hand-written.conf").read_text()
    put_file(machine, KUBEADM, original)
    put_file(machine, "/etc/kubernetes/kubelet-config.yaml", (FIXTURES / "kubelet-config.yaml").read_text())
    kubelet_sha = sha(machine, "/etc/kubernetes/kubelet-config.yaml")
    module = "kubenode.dataplane.kube_proxy_config"
    # the settings checked on the controller fail before any connection (unknown mode, wrong type, bad
    # duration: tests/netns and tests/unit); these two need the file on the host
    typo = (FIXTURES / "kube-proxy-systemd-config.yaml").read_text() + "ipvs:\n  strictArp: true\n"
    put_file(machine, "/var/lib/kube-proxy/typo.yaml", typo)
    bad = [
        ("unknown field in the file", {"path": "/var/lib/kube-proxy/typo.yaml", "mode": "ipvs"}),
        ("not a KubeProxyConfiguration", {"path": "/etc/kubernetes/kubelet-config.yaml", "mode": "ipvs"}),
    ]
    tasks = [
        {"name": "check mode", module: {"path": KUBEADM, "mode": "ipvs", "ipvs": {"scheduler": "wrr"}},
         "check_mode": True, "diff": True, "register": "r"},
        {"name": "apply", module: {"path": KUBEADM, "mode": "ipvs", "ipvs": {"scheduler": "wrr"}}, "register": "r"},
        {"name": "again", module: {"path": KUBEADM, "mode": "ipvs", "ipvs": {"scheduler": "wrr"}}, "register": "r"},
    ] + [{"name": name, module: args, "register": "r", "ignore_errors": True} for name, args in bad]
    run = ansible_run.playbook([{"name": "kube_proxy_config on the VM", "hosts": "all", "gather_facts": False,
                                 "tasks": tasks}], inventory)
    checked = run.task("check mode")["result"]
    assert checked["changed"] and checked["changes"] == ["$.mode", "$.ipvs.scheduler"]
    assert checked["diff"]["before"] == original
    applied = run.task("apply")["result"]
    assert applied["changed"] and applied["document_index"] == 2 and applied["effective_mode"] == "ipvs"
    after = machine.ssh("cat", KUBEADM).stdout
    mtime = machine.ssh("stat", "-c", "%Y", KUBEADM).stdout
    assert changed_lines(original, after) == [
        '-mode: "iptables"   # switch with kubenode.dataplane.kube_proxy',
        '+mode: "ipvs"   # switch with kubenode.dataplane.kube_proxy',
        "+  scheduler: wrr",
    ]
    again = run.task("again")["result"]
    assert again["changed"] is False and again["changes"] == []
    messages = {name: run.task(name)["result"]["msg"] for name, _args in bad}
    for name in messages:
        assert run.task(name)["status"] == "ignored", name
    assert "$.ipvs.strictArp: 'strictArp' is not a known field (did you mean 'strictARP'?)" in messages["unknown field in the file"]
    assert "it holds KubeletConfiguration (kubelet.config.k8s.io/v1beta1)" in messages["not a KubeProxyConfiguration"]
    assert all(m.endswith("was left as it was") for m in messages.values()), messages
    assert messages["unknown field in the file"].startswith(
        "the result would not be a valid KubeProxyConfiguration (/var/lib/kube-proxy/typo.yaml)")
    assert machine.ssh("cat", KUBEADM).stdout == after and machine.ssh("stat", "-c", "%Y", KUBEADM).stdout == mtime
    assert machine.ssh("cat", "/var/lib/kube-proxy/typo.yaml").stdout == typo
    assert sha(machine, "/etc/kubernetes/kubelet-config.yaml") == kubelet_sha


@pytest.fixture(scope="module")
def stub_cluster(kube_proxy_vm, tmp_path_factory):
    machine, inventory, pod = kube_proxy_vm
    snapshots: list[dict] = []

    def start_pod(text: str) -> None:
        pod.start(text)
        # what kube-proxy has programmed once this pod runs: the reference for "untouched"
        snapshots.append({"config": text, "rules": ruleset(machine), "ipvs": ipvs(machine)})

    # the node starts in iptables mode (the stub seeds the pods) with Calico next to kube-proxy
    stub = KubeApiStub(tmp_path_factory.mktemp("stub"), {"kubenode-vm": start_pod}, tick=0.3).start()
    subprocess.run(machine.ssh_argv("iptables-nft-restore", "--noflush"), input=(FIXTURES / "calico-felix.rules").read_text(),
                   text=True, check=True, capture_output=True)
    try:
        yield stub, snapshots
    finally:
        stub.stop()


def cluster_run(stub, inventory, mode):
    return ansible_run.playbook(
        [{"name": "switch the stub cluster", "hosts": "all", "gather_facts": False, "roles": [{"role": ROLE}]}],
        inventory, extra_vars={"kube_proxy_mode": mode, "kube_proxy_target": "cluster",
                               "kube_proxy_kubeconfig": str(stub.kubeconfig), "kube_proxy_api_host": "localhost",
                               "kube_proxy_rollout_poll_interval": 0.5, "kube_proxy_verify_timeout": 20})


def test_cluster_switch_from_iptables_to_ipvs(kube_proxy_vm, stub_cluster):
    machine, inventory, _pod = kube_proxy_vm
    stub, snapshots = stub_cluster
    original = stub.config_text()
    calico_before = [line for line in ruleset(machine) if "cali-" in line]

    run = cluster_run(stub, inventory, "ipvs")
    assert run.rc == 0, run.explain()
    # the ConfigMap: mode: ipvs and nothing else
    assert changed_lines(original, stub.config_text()) == ['-mode: ""', "+mode: ipvs"]
    assert stub.calls("PUT", CONFIGMAP_PATH) == 1 and stub.calls("PATCH", DAEMONSET_PATH) == 1 and stub.restarts == 1
    # the preflight only checked; the IPVS modules were loaded (and persisted) before the switch
    assert task(run, "Check that the IPVS modules can be loaded")["status"] == "ok"
    assert task(run, "Load the IPVS modules now and at boot")["status"] == "ok"
    assert "ip_vs" in machine.ssh("cat", "/proc/modules").stdout
    assert task(run, "Wait until kube-proxy reports the wanted mode at /proxyMode")["result"]["proxy_mode"]["mode"] == "ipvs"
    assert machine.ssh("curl", "-s", "http://127.0.0.1:10249/proxyMode").stdout == "ipvs"
    # the stale chains of iptables mode are gone; everything else is as kube-proxy (ipvs) and Calico left it
    cleaned = task(run, "Remove what the previous mode left on this node")["result"]
    assert cleaned["changed"] and any("chain KUBE-SVC-NPX46M4PTMTKRN6Y" in line for line in cleaned["removed"])
    live = snapshots[-1]
    assert "mode: ipvs" in live["config"]
    after = ruleset(machine)
    assert not [line for line in after if STALE.search(line)]
    expected = [line for line in live["rules"] if not STALE.search(line)]
    assert after == expected
    assert [line for line in after if "cali-" in line] == calico_before
    assert ipvs(machine) == live["ipvs"] and "-A -t 10.96.0.1:443 -s rr" in live["ipvs"]
    assert machine.ssh("ip", "link", "show", "kube-ipvs0", check=False).returncode == 0

    again = cluster_run(stub, inventory, "ipvs")
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.stdout
    assert stub.calls("PUT", CONFIGMAP_PATH) == 1 and stub.restarts == 1
    assert ruleset(machine) == after


def file_run(inventory, mode, check=False):
    return ansible_run.playbook(
        [{"name": "switch the VM's kube-proxy service", "hosts": "all", "gather_facts": False, "roles": [{"role": ROLE}]}],
        inventory, check=check, diff=check,
        extra_vars={"kube_proxy_mode": mode, "kube_proxy_target": "file", "kube_proxy_config_path": VM_CONFIG,
                    "kube_proxy_service": "kube-proxy.service", "kube_proxy_verify_timeout": 20})


def test_file_target_leaves_ipvs_for_iptables(kube_proxy_vm, stub_cluster):
    machine, inventory, _pod = kube_proxy_vm
    # a load balancer of the operator's own, not kube-proxy's: it must stay
    machine.ssh("ipvsadm", "-A", "-t", "192.0.2.10:80", "-s", "wrr")
    config_before = machine.ssh("cat", VM_CONFIG).stdout
    rules_before, ipvs_before = ruleset(machine), ipvs(machine)
    started = machine.ssh("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "kube-proxy.service").stdout

    checked = file_run(inventory, "iptables", check=True)
    assert checked.rc == 0, checked.explain()
    assert task(checked, "Merge the settings into the node's kube-proxy configuration")["result"]["changes"] == ["$.mode"]
    would = task(checked, "Remove what the previous mode left on this node")["result"]["removed"]
    assert "link: kube-ipvs0 (10.96.0.1, 10.96.0.10, 10.96.100.10)" in would
    assert machine.ssh("cat", VM_CONFIG).stdout == config_before and ipvs(machine) == ipvs_before
    assert machine.ssh("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "kube-proxy.service").stdout == started

    run = file_run(inventory, "iptables")
    assert run.rc == 0, run.explain()
    assert changed_lines(config_before, machine.ssh("cat", VM_CONFIG).stdout) == ["-mode: ipvs", "+mode: iptables"]
    assert task(run, "Restart the kube-proxy service")["result"]["changed"]
    assert machine.ssh("curl", "-s", "http://127.0.0.1:10249/proxyMode").stdout == "iptables"
    removed = task(run, "Remove what the previous mode left on this node")["result"]["removed"]
    assert sorted(removed) == sorted([
        "ipvs: service TCP 10.0.2.15:30080", "ipvs: service TCP 10.96.0.1:443", "ipvs: service TCP 10.96.100.10:80",
        "ipvs: service UDP 10.96.0.10:53", "link: kube-ipvs0 (10.96.0.1, 10.96.0.10, 10.96.100.10)"])
    assert ipvs(machine) == ["-A -t 192.0.2.10:80 -s wrr"]
    assert machine.ssh("ip", "link", "show", "kube-ipvs0", check=False).returncode != 0
    assert ruleset(machine) == rules_before  # iptables is the live mode now: not one rule touched

    again = file_run(inventory, "iptables")
    assert again.rc == 0, again.explain()
    assert again.changed() == 0, again.stdout
    assert yaml.safe_load(machine.ssh("cat", VM_CONFIG).stdout)["mode"] == "iptables"
    assert ipvs(machine) == ["-A -t 192.0.2.10:80 -s wrr"] and ruleset(machine) == rules_before
