"""dataplane_info on the real-kernel VM (Debian's kernel: loadable modules, IP_VS as a module).

Three reads: kube-proxy configured for ipvs while the IPVS modules are not loaded (warned), then
what ipvs mode leaves in the kernel (modules, kube-ipvs0, an IPVS virtual service) so that the
mode is inferred, with MetalLB and strictARP off, then strictARP on, judged from the two sysctls
kube-proxy sets for it. Everything the test changed in the VM is undone afterwards.
"""

from __future__ import annotations

import shlex

import pytest

pytestmark = pytest.mark.vm

CONFIG = "/root/kube-proxy-test.yaml"
KUBE_PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
ipvs:
  strictARP: false
"""
IPVS_MODULES = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"]
UNDO = [
    ["ipvsadm", "-C"],
    ["ip", "link", "del", "kube-ipvs0"],
    ["modprobe", "-r", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs"],
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0"],
    ["rm", "-f", CONFIG],
]
SETUP_IPVS = [
    ["modprobe", "-a"] + IPVS_MODULES + ["nf_conntrack"],
    ["ip", "link", "add", "kube-ipvs0", "type", "dummy"],
    ["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"],
    ["ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "rr"],
    ["ipvsadm", "-a", "-t", "10.96.0.1:443", "-r", "10.0.2.15:6443", "-m"],
    # forwarding on, as on any node
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
]
# what kube-proxy sets when ipvs.strictARP is true
STRICT_ARP = [["sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]]


def remote(machine, commands: list[list[str]], check: bool = True) -> None:
    """Runs the commands in one SSH session (each argv quoted; SSH hands the remote shell one line)."""
    joiner = " && " if check else " ; "
    machine.ssh(joiner.join(shlex.join(argv) for argv in commands), check=check)


def play(*tasks: dict) -> list:
    return [{"name": "dataplane_info on a real kernel", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}]


def info(name: str, **args) -> dict:
    return {"name": name, "kubenode.dataplane.dataplane_info": args}


def read(playbook, inventory, task: dict, *before: dict) -> dict:
    run = playbook(play(*before, task), inventory)
    assert run.rc == 0, run.explain()
    return run.task(task["name"])["result"]


def test_dataplane_info_on_the_real_kernel(vm, playbook):
    machine, inventory = vm
    remote(machine, UNDO, check=False)
    assert "ip_vs " not in machine.ssh("cat", "/proc/modules").stdout, "ip_vs is still loaded by an earlier test"
    try:
        write = {"name": "write a kube-proxy configuration for ipvs mode",
                 "ansible.builtin.copy": {"dest": CONFIG, "content": KUBE_PROXY_CONFIG, "mode": "0644"}}
        before = read(playbook, inventory, info("configured for ipvs, modules not loaded", kube_proxy_config=CONFIG), write)
        assert before["kernel"]["config"]["CONFIG_MODULES"] == "y"
        assert before["kernel"]["features"]["ip_vs"] == "module"
        assert before["kernel"]["config_source"] == f"/boot/config-{before['kernel']['release']}"
        assert before["modules"]["loadable"] is True
        assert before["modules"]["state"]["ip_vs"] == "available"
        assert before["ipvs"]["available"] is False
        assert before["sysctls"]["net.ipv4.vs.conntrack"] is None
        assert before["kube_proxy"]["configured_mode"] == "ipvs"
        assert before["kube_proxy"]["mode"] is None
        assert (before["kube_proxy"]["strict_arp"], before["kube_proxy"]["strict_arp_source"]) == (False, "config")
        assert [f["id"] for f in before["findings"]] == ["ipvs_modules_missing", "ip_forward_off"]
        assert "ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh, nf_conntrack are not loaded" in before["findings"][0]["message"]

        # what ipvs mode leaves in the kernel (set up over SSH: fewer Ansible round trips under emulation)
        remote(machine, SETUP_IPVS)
        after = read(playbook, inventory, info("ipvs mode left in the kernel, MetalLB present", metallb="present"))
        assert all(after["modules"]["state"][m] == "loaded" for m in IPVS_MODULES + ["nf_conntrack", "dummy"])
        assert after["ipvs"]["available"] is True
        assert after["ipvs"]["services"] == 1 and after["ipvs"]["services_on_kube_ipvs0"] == 1
        assert after["ipvs"]["kube_ipvs0"] == {"present": True, "kind": "dummy", "addresses": 1}
        assert after["kube_proxy"]["mode"] == "ipvs" and after["kube_proxy"]["mode_source"] == "inferred"
        assert after["sysctls"]["net.ipv4.vs.conntrack"] == "0"
        assert (after["kube_proxy"]["strict_arp"], after["kube_proxy"]["strict_arp_source"]) == (False, "sysctl")
        assert [f["id"] for f in after["findings"]] == ["strict_arp_off_with_metallb"]

        remote(machine, STRICT_ARP)
        strict = read(playbook, inventory, info("strictARP on", metallb="present"))
        assert strict["kube_proxy"]["strict_arp"] is True
        assert strict["findings"] == []
    finally:
        remote(machine, UNDO, check=False)
