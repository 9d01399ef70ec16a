"""The real kube-proxy on the real-kernel VM, as `kube-proxy.service`, against the real API server of cluster.py.

    node = VmNode(machine, cluster)       # machine: tests/harness/vm/vm.py's VM; cluster: a started Cluster
    node.install()                        # binary, kubeconfig, config.conf, unit, backend, Services; waits healthy
    node.proxy_mode()                     # "iptables"
    node.curl(node.cluster_ip)            # (200, BODY)

What the VM gets, as a kubeadm node has it (paths of kubeadm's DaemonSet, which mounts them in its pod):

- ``/usr/local/bin/kube-proxy``: the binary built by build.py (copied when its sha256 differs);
- ``/var/lib/kube-proxy/config.conf``: the cluster's ConfigMap ``config.conf`` byte for byte (kubeadm's document:
  ``mode: iptables``, ``clientConnection.kubeconfig: /var/lib/kube-proxy/kubeconfig.conf``, nulls included);
- ``/var/lib/kube-proxy/kubeconfig.conf``: a kubeconfig for ``system:kube-proxy`` (client certificate) to
  ``https://10.0.2.2:PORT``, QEMU's gateway, which reaches the API server on this machine's 127.0.0.1. The pod's
  kubeconfig.conf names a ServiceAccount token file that only a kubelet would mount;
- ``kube-proxy.service``: ``kube-proxy --config=... --hostname-override=kubenode-vm`` (the DaemonSet's command),
  ``Restart=on-failure`` as node units are written; the Node object ``kubenode-vm`` with InternalIP 10.0.2.15 is
  created first (kube-proxy takes its node IP from it); nf_conntrack loaded first, as a container runtime has;
- the endpoint: ``kn-web.service``, Python's http.server on 10.0.2.15:8080; the Services ``kn-web`` (ClusterIP)
  and ``kn-web-np`` (NodePort) with one EndpointSlice each (no controller-manager runs to make them).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tests.harness.kube.cluster import KUBE_PROXY_USER, Cluster

NODE = "kubenode-vm"
NODE_IP = "10.0.2.15"
GATEWAY = "10.0.2.2"        # QEMU user networking: this machine's loopback as the VM sees it
BINARY = "/usr/local/bin/kube-proxy"
CONFIG = "/var/lib/kube-proxy/config.conf"
KUBECONFIG = "/var/lib/kube-proxy/kubeconfig.conf"
SERVICE = "kube-proxy.service"
BACKEND_PORT = 8080
BODY = "kubenode backend on kubenode-vm\n"
CLUSTER_IP_SERVICE = "kn-web"
NODE_PORT_SERVICE = "kn-web-np"
METRICS = "http://127.0.0.1:10249"
HEALTHZ = "http://127.0.0.1:10256/healthz"
PROBE = Path(__file__).resolve().parent / "probe.py"
VM_PROBE = "/usr/local/lib/kubenode-test/probe.py"

UNIT = f"""[Unit]
Description=kube-proxy (the real one, v1.37 built from source, for the kubenode.dataplane tests)
After=network-online.target

[Service]
ExecStart={BINARY} --config={CONFIG} --hostname-override={NODE} --v=2
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

BACKEND_UNIT = f"""[Unit]
Description=the endpoint of the kn-web Services (kubenode.dataplane tests)

[Service]
ExecStart=/usr/bin/python3 -m http.server {BACKEND_PORT} --bind {NODE_IP} --directory /srv/kn-web
"""


class VmNode:
    """The VM as a node of the real cluster, with the real kube-proxy as a systemd service."""

    def __init__(self, machine, cluster: Cluster) -> None:
        self.machine = machine
        self.cluster = cluster
        self.cluster_ip = ""
        self.node_port = 0

    # -- plumbing --
    def ssh(self, *argv: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        # ssh hands the remote shell one line: each word quoted, so that it arrives as it was given
        return self.machine.ssh(*(shlex.quote(a) for a in argv), check=check, timeout=timeout)

    def put(self, path: str, data: bytes, mode: str = "0644") -> None:
        """Write *data* to *path* on the VM, atomically (a temporary name, then rename)."""
        quoted = shlex.quote(path)
        subprocess.run(self.machine.ssh_argv(
            f"mkdir -p $(dirname {quoted}) && cat > {quoted}.part && chmod {mode} {quoted}.part && mv {quoted}.part {quoted}"),
            input=data, check=True, capture_output=True, timeout=300)

    def get(self, path: str) -> str:
        return self.ssh("cat", path).stdout

    # -- installation --
    def install(self, wait: float = 120.0) -> "VmNode":
        binary = self.cluster.bin_dir / "kube-proxy"
        want = hashlib.sha256(binary.read_bytes()).hexdigest()
        have = self.ssh("sha256sum", BINARY, check=False).stdout.split()[:1]
        if have != [want]:
            self.put(BINARY, binary.read_bytes(), "0755")
        self.cluster.create_node(NODE, NODE_IP)
        local = self.cluster.dir / "vm-kube-proxy.kubeconfig"
        self.cluster.write_kubeconfig(local, KUBE_PROXY_USER, self.cluster.url(GATEWAY))
        self.put(KUBECONFIG, local.read_bytes(), "0600")
        self.put(CONFIG, self.cluster.kube_proxy_config_conf().encode())
        self.put(f"/etc/systemd/system/{SERVICE}", UNIT.encode())
        self.put("/etc/systemd/system/kn-web.service", BACKEND_UNIT.encode())
        self.put("/srv/kn-web/index.html", BODY.encode())
        self.put(VM_PROBE, PROBE.read_bytes())
        self.ssh("systemctl", "daemon-reload")
        # kube-proxy sets nf_conntrack_max before anything else and exits when the sysctl is missing; on a real
        # node the container runtime's networking has loaded nf_conntrack long before kube-proxy starts
        self.ssh("modprobe", "nf_conntrack")
        self.ssh("systemctl", "restart", "kn-web.service")
        self.create_services()
        self.ssh("systemctl", "restart", SERVICE)
        self.wait_healthy(wait)
        return self

    def create_services(self) -> None:
        port = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": BACKEND_PORT}]
        slice_port = [{"name": "http", "protocol": "TCP", "port": BACKEND_PORT}]
        services = {}
        for name, kind in ((CLUSTER_IP_SERVICE, "ClusterIP"), (NODE_PORT_SERVICE, "NodePort")):
            services[name] = self.cluster.create_service(name, port, type=kind)
            self.cluster.create_endpoint_slice(name, [NODE_IP], slice_port, node_name=NODE)
        self.cluster_ip = services[CLUSTER_IP_SERVICE]["spec"]["clusterIP"]
        self.node_port = services[NODE_PORT_SERVICE]["spec"]["ports"][0]["nodePort"]

    def uninstall(self) -> None:
        """Stop the services and clean what kube-proxy left (kube-proxy --cleanup), remove the cluster's objects."""
        self.ssh("systemctl", "stop", SERVICE, "kn-web.service", check=False)
        self.ssh(BINARY, "--cleanup", "--v=0", check=False, timeout=120)
        for name in (CLUSTER_IP_SERVICE, NODE_PORT_SERVICE):
            self.cluster.delete(f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}-kubenode")
            self.cluster.delete(f"/api/v1/namespaces/default/services/{name}")
        self.cluster.delete(f"/api/v1/nodes/{NODE}")

    # -- what the node shows --
    def curl(self, url: str, timeout: float = 5.0) -> Tuple[int, str]:
        """GET *url* from the VM (an address alone means http://ADDRESS/): (status, body); 0 when nothing answered."""
        if "://" not in url:
            url = f"http://{url}/"
        proc = self.ssh("curl", "-s", "--max-time", str(timeout), "-o", "/dev/stdout", "-w", "\n%{http_code}", url,
                        check=False, timeout=int(timeout) + 60)
        body, _sep, code = proc.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def proxy_mode(self) -> str:
        status, body = self.curl(f"{METRICS}/proxyMode", 3)
        return body if status == 200 else ""

    def wait_healthy(self, seconds: float = 120.0) -> float:
        """Until /healthz answers 200 (kube-proxy synced once); seconds waited. Raises with the unit's log."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if self.curl(HEALTHZ, 3)[0] == 200:
                return time.monotonic() - started
            time.sleep(1)
        raise RuntimeError(f"kube-proxy on the VM not healthy within {seconds:.0f} s:\n{self.journal(lines=30)}")

    def answers(self) -> Dict[str, Tuple[int, str]]:
        """The ClusterIP from the node and the NodePort on the node's address, through kube-proxy's rules."""
        return {"cluster_ip": self.curl(self.cluster_ip), "node_port": self.curl(f"{NODE_IP}:{self.node_port}")}

    def wait_answers(self, seconds: float = 60.0) -> Dict[str, Tuple[int, str]]:
        """answers() once both are (200, BODY): a restarted kube-proxy programs its rules at its first sync."""
        deadline = time.monotonic() + seconds
        while True:
            got = self.answers()
            if all(v == (200, BODY) for v in got.values()) or time.monotonic() > deadline:
                return got
            time.sleep(1)

    def started_at(self) -> str:
        """The unit's start time (monotonic µs): changes exactly when the service was (re)started."""
        return self.ssh("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", SERVICE).stdout.strip()

    def journal(self, since_start: bool = True, lines: int = 0) -> str:
        """kube-proxy's log (from the journal): of its current run only, by default."""
        argv = ["journalctl", "-u", SERVICE, "--no-pager", "-o", "cat"]
        if since_start:
            invocation = self.ssh("systemctl", "show", "-p", "InvocationID", "--value", SERVICE).stdout.strip()
            argv += ["_SYSTEMD_INVOCATION_ID=" + invocation]
        if lines:
            argv += ["-n", str(lines)]
        return self.ssh(*argv, check=False).stdout

    # -- the dataplane, as the tools print it --
    def iptables_save(self, binary: str = "iptables-save") -> List[str]:
        """Every table (counters stripped): the lines of iptables' kube-proxy and others."""
        out = self.ssh(binary, check=False).stdout
        return [line.split(" [", 1)[0] if line.startswith(":") else line
                for line in out.splitlines() if not line.startswith("#")]

    def kube_chains(self) -> List[str]:
        """KUBE-* chain declarations and every rule naming one, from iptables-nft and iptables-legacy."""
        lines = []
        for binary in ("iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"):
            lines += [f"{binary}: {line}" for line in self.iptables_save(binary) if "KUBE-" in line]
        return lines

    def nft_tables(self) -> List[str]:
        out = self.ssh("nft", "list", "tables", check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def ipvs(self) -> List[str]:
        return sorted(self.ssh("ipvsadm", "-Sn", check=False).stdout.splitlines())

    def ipsets(self) -> List[str]:
        return sorted(self.ssh("ipset", "list", "-n", check=False).stdout.split())

    def links(self) -> List[str]:
        return sorted(link["ifname"] for link in json.loads(self.ssh("ip", "-j", "link", "show").stdout))

    def dataplane(self) -> Dict[str, Any]:
        """What each mode of kube-proxy leaves on a node, read back with the tools."""
        return {"kube_chains": self.kube_chains(), "nft_tables": self.nft_tables(), "ipvs": self.ipvs(),
                "ipsets": [s for s in self.ipsets() if s.startswith("KUBE-")],
                "kube_ipvs0": "kube-ipvs0" in self.links()}

    # -- the outage of a switch --
    def start_probe(self, target: str, interval: float = 0.05, name: str = "probe") -> None:
        """Start probe.py on the VM (a client connecting to *target* every *interval* s) until stop_probe()."""
        self.ssh("systemd-run", "--unit", f"kn-{name}", "--collect", "/usr/bin/python3", VM_PROBE, target,
                 "--interval", str(interval), "--out", f"/run/kn-{name}.json")

    def stop_probe(self, name: str = "probe") -> Dict[str, Any]:
        self.ssh("systemctl", "kill", "-s", "INT", f"kn-{name}.service", check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.ssh("cat", f"/run/kn-{name}.json", check=False)
            if out.returncode == 0 and out.stdout.strip():
                self.ssh("rm", "-f", f"/run/kn-{name}.json")
                return json.loads(out.stdout)
            time.sleep(0.5)
        raise RuntimeError(f"the probe on the VM wrote no result: {self.ssh('systemctl', 'status', f'kn-{name}', check=False).stdout}")


def last_line(text: str, needle: str) -> Optional[str]:
    for line in reversed(text.splitlines()):
        if needle in line:
            return line
    return None
