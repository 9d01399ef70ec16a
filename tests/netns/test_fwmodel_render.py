"""The firewall model's renderings are accepted by the real tools (dry runs inside a namespace)."""

from __future__ import annotations

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils import _fwmodel as fw

pytestmark = pytest.mark.netns

MODELS = [
    {"node_role": "worker"},
    {"node_role": "control_plane", "cluster_cidrs": ["10.0.0.0/16", "fd00:10::/64"], "ssh_sources": ["192.0.2.0/24"],
     "trusted_interfaces": ["cali*", "tunl0"], "log_dropped": True, "default_action": "reject",
     "extra_rules": [{"name": "node-exporter", "protocol": "tcp", "ports": "9100", "sources": ["10.0.0.0/8"]}]},
]


@pytest.mark.parametrize("model", MODELS, ids=["worker", "control-plane-full"])
def test_renderings_pass_native_dry_runs(model, netns_lab):
    host = netns_lab[0].hosts[0]
    check = host.run(["nft", "-c", "-f", "-"], check=False, input=fw.render_nft(model))
    assert check.returncode == 0, check.stderr
    for chain in fw.render_iptables(model):
        tool = "iptables-restore" if chain["ip_version"] == "ipv4" else "ip6tables-restore"
        lines = ["*filter", f":{chain['chain']} - [0:0]"] + [f"-A {chain['chain']} {r}" for r in chain["rules"]] + ["COMMIT", ""]
        proc = host.run([tool, "--test", "--noflush"], check=False, input="\n".join(lines))
        assert proc.returncode == 0, proc.stderr + "\n".join(lines)
