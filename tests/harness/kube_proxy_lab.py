"""kube-proxy "pods" for the kube_proxy tests: the /proxyMode STAND-IN on netns hosts and on the VM.

The Kubernetes API stub (kube_api_stub.py) calls ``start(config_text)`` of a node's pod when it
(re)starts kube-proxy there. A pod here does what a kube-proxy pod does that the tests can
observe: it runs with the configuration it was started with and answers /proxyMode on its
metricsBindAddress (tests/harness/proxymode_standin.py). On the VM it also programs the rules
kube-proxy programs when it starts in a mode (``kube_proxy_rules``), from the rule files in
tests/unit/fixtures/kube_proxy, so that a switch leaves exactly what a real switch leaves.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "proxymode_standin.py"
FIXTURES = HERE.parent / "unit" / "fixtures" / "kube_proxy"
VM_STANDIN = "/usr/local/lib/kubenode-test/proxymode_standin.py"
VM_CONFIG = "/var/lib/kube-proxy/config.conf"
# kube-proxy's IPVS objects for the services of kube-proxy-iptables-mode.rules, as its ipvs proxier creates them
IPVS_SERVICES = [("-t", "10.96.0.1:443", "198.18.0.1:6443"), ("-u", "10.96.0.10:53", "10.244.1.3:53"),
                 ("-t", "10.96.100.10:80", "10.244.1.5:8080"), ("-t", "10.0.2.15:30080", "10.244.1.5:8080")]
IPSETS = [("KUBE-CLUSTER-IP", "hash:ip,port"), ("KUBE-LOOP-BACK", "hash:ip,port,ip"), ("KUBE-NODE-PORT-TCP", "bitmap:port range 0-65535"),
          ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port range 0-65535"), ("KUBE-LOAD-BALANCER", "hash:ip,port"),
          ("KUBE-EXTERNAL-IP", "hash:ip,port"), ("KUBE-IPVS-IPS", "hash:ip")]


def mode_of(config_text: str) -> str:
    doc = yaml.safe_load(config_text) or {}
    return doc.get("mode") or "iptables"


class NetnsKubeProxy:
    """The kube-proxy pod of a netns host: the stand-in process inside the namespace."""

    def __init__(self, host, workdir: Path) -> None:
        self.host = host
        self.dir = Path(workdir) / host.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.last_error = ""

    def start(self, config_text: str) -> None:
        self.stop()
        config = self.dir / "config.conf"
        config.write_text(config_text)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.host.netns, sys.executable, str(STANDIN), "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # the stand-in prints one line once it listens; a failed start (ipvs without IP_VS) exits instead
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=10)
        line = self.proc.stdout.readline() if ready else ""
        if "stand-in kube-proxy" not in line:
            self.last_error = line.strip() or "no answer"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class VmKubeProxy:
    """kube-proxy on the VM: the stand-in as kube-proxy.service, plus the rules each mode programs."""

    UNIT = """[Unit]
Description=kube-proxy STAND-IN for the kubenode.dataplane tests (serves /proxyMode only)

[Service]
ExecStart=/usr/bin/python3 {standin} --config {config}
Restart=no
"""

    def __init__(self, machine, program_rules: bool = True) -> None:
        self.machine = machine
        self.program_rules = program_rules

    def ssh_in(self, text: str, command: str) -> None:
        """Run one remote command line (ssh hands it to the remote shell) with ``text`` on its stdin."""
        subprocess.run(self.machine.ssh_argv(command), input=text, text=True, check=True, capture_output=True, timeout=120)

    def install(self) -> None:
        self.machine.ssh("mkdir", "-p", "/usr/local/lib/kubenode-test", "/var/lib/kube-proxy")
        self.ssh_in(STANDIN.read_text(), f"cat > {VM_STANDIN}")
        self.ssh_in(self.UNIT.format(standin=VM_STANDIN, config=VM_CONFIG), "cat > /etc/systemd/system/kube-proxy.service")
        self.machine.ssh("systemctl", "daemon-reload")

    def start(self, config_text: str) -> None:
        """What a kube-proxy pod starting on the VM does: program its mode's rules, then serve."""
        self.ssh_in(config_text, f"cat > {VM_CONFIG}")
        if self.program_rules:
            self.kube_proxy_rules(mode_of(config_text))
        self.machine.ssh("systemctl", "restart", "kube-proxy.service")

    def kube_proxy_rules(self, mode: str) -> None:
        if mode == "iptables":
            self.ssh_in((FIXTURES / "kube-proxy-iptables-mode.rules").read_text(), "iptables-nft-restore --noflush")
        elif mode == "ipvs":
            script = ["modprobe ip_vs", "ip link show kube-ipvs0 >/dev/null 2>&1 || ip link add kube-ipvs0 type dummy"]
            script += [f"ipset -exist create {name} {kind}" for name, kind in IPSETS]
            for flag, vip, real in IPVS_SERVICES:
                host = vip.rsplit(":", 1)[0]
                if not host.startswith("10.0.2."):
                    script.append(f"ip addr replace {host}/32 dev kube-ipvs0")
                script.append(f"ipvsadm -A {flag} {vip} -s rr 2>/dev/null || true")
                script.append(f"ipvsadm -a {flag} {vip} -r {real} -m -w 1 2>/dev/null || true")
                proto = "udp" if flag == "-u" else "tcp"
                if not host.startswith("10.0.2."):
                    script.append(f"ipset -exist add KUBE-CLUSTER-IP {host},{proto}:{vip.rsplit(':', 1)[1]}")
            self.ssh_in("\n".join(script) + "\n", "sh -e")
            self.ssh_in((FIXTURES / "kube-proxy-ipvs-takeover.rules").read_text(), "iptables-nft-restore --noflush")
