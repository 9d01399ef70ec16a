"""Netns hosts made to look like Kubernetes nodes, for dataplane_info's tests and fixtures.

Each builder takes ``run(argv, input=None)`` that runs a command inside the namespace, and
loads real rules with the real tools (iptables-nft-restore, iptables-legacy-restore, nft -f)
from tests/unit/fixtures/dataplane_info/inputs. The same builders produced the captured
fixtures under tests/unit/fixtures/dataplane_info (see capture_dataplane_info.py).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

INPUTS = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "dataplane_info" / "inputs"
Run = t.Callable[..., t.Any]

CALI_IF = "cali1a2b3c4d5e6"


def _restore(run: Run, tool: str, name: str, *args: str) -> None:
    run([tool, *args], input=(INPUTS / name).read_text())


def _forwarding(run: Run) -> None:
    # as on any Kubernetes node; a new namespace starts with forwarding off
    run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])


def bare(run: Run) -> None:
    """Nothing at all: a host without Kubernetes."""


def kube_iptables_calico(run: Run) -> None:
    """kube-proxy in iptables mode on the nft backend, Calico's iptables dataplane beside it."""
    _forwarding(run)
    _restore(run, "iptables-nft-restore", "kube-proxy-iptables.rules")
    _restore(run, "iptables-nft-restore", "calico-iptables.rules", "--noflush")
    _restore(run, "ip6tables-nft-restore", "kube-proxy-ip6tables.rules")
    # a workload veth as Calico names them, and its VXLAN device with the node's tunnel address
    run(["ip", "link", "add", CALI_IF, "type", "veth", "peer", "name", "wl0"])
    run(["ip", "link", "set", CALI_IF, "up"])
    run(["ip", "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789"])
    run(["ip", "addr", "add", "10.244.1.0/32", "dev", "vxlan.calico"])
    run(["ip", "link", "set", "vxlan.calico", "up"])


def mixed(run: Run) -> None:
    """The node above, plus another program's rules in the legacy backend."""
    kube_iptables_calico(run)
    _restore(run, "iptables-legacy-restore", "docker-legacy.rules")


def nftables_mode(run: Run) -> None:
    """kube-proxy in nftables mode, with Calico, firewalld, Docker and our node firewall tables."""
    _forwarding(run)
    run(["nft", "-f", str(INPUTS / "nftables-node.nft")])
    _restore(run, "iptables-nft-restore", "kubelet-hint.rules")


SCENARIOS: t.Dict[str, t.Callable[[Run], None]] = {
    "bare": bare,
    "kube-iptables-calico": kube_iptables_calico,
    "mixed": mixed,
    "nftables-mode": nftables_mode,
}
