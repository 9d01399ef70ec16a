"""The real kube-proxy as a process in a netns test host, against the real API server of cluster.py.

    cluster = Cluster(...).start()
    server = cluster.expose_to_lab(lab.switch)            # https://198.18.0.254:PORT inside the lab
    proxy = start_kube_proxy(cluster, lab.hosts[0], "nftables", server, workdir)
    proxy.get("/proxyMode")                                # (200, "nftables")
    proxy.stop()

What a real node has and this host gets first: a Node object of its name whose InternalIP is its
198.18.0.N (kube-proxy takes its node IPs from it), a kubeconfig for system:kube-proxy (a client certificate;
the bootstrap ClusterRoleBinding system:node-proxier grants it what kube-proxy reads), a default route and IPv4
forwarding (prepare_node).

The KubeProxyConfiguration is the one `kubeadm init` puts in the kube-proxy ConfigMap (config.conf, read from
the cluster) with only what a DaemonSet pod gets elsewhere and what a network namespace needs (NAMESPACE_FIELDS,
documented in tests/README-kube.md).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from tests.harness.kube.cluster import KUBE_PROXY_USER, NETNS_ADDRESS, NICE, PDEATHSIG, Cluster
from tests.harness.netns_hosts import Host

MODES = ("iptables", "nftables")
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
START_TIMEOUT = 30.0


def namespace_fields(node_name: str, mode: str, kubeconfig: Path) -> Dict[str, Any]:
    """The fields set over kubeadm's config.conf, and why each one is needed in a netns host."""
    return {
        # The DaemonSet mounts the ConfigMap's kubeconfig.conf (a ServiceAccount token file); a process outside a
        # pod has no token, so it gets a kubeconfig with system:kube-proxy's client certificate instead.
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        # The DaemonSet passes --hostname-override=$(NODE_NAME); here it is the Node object created first.
        "hostnameOverride": node_name,
        "mode": mode,
        # kube-proxy raises nf_conntrack_max to maxPerCore x CPUs (default 32768, at least min 131072) when it is
        # lower, and the conntrack hash size with it. Outside the initial network namespace nf_conntrack_max is
        # read-only: kube-proxy then exits with "could not set conntrack parameters from kube-proxy configuration:
        # open /proc/sys/net/netfilter/nf_conntrack_max: permission denied". 0 leaves both alone. (On this 2-core
        # machine nf_conntrack_max is 262144, so the default would pass here and fail with more cores.)
        "conntrack": {"maxPerCore": 0},
    }


def kube_proxy_config(base_config_conf: str, node_name: str, mode: str, kubeconfig: Path) -> Dict[str, Any]:
    """kubeadm's config.conf with namespace_fields() merged over it (nested keys merged, the rest kept)."""
    config = yaml.safe_load(base_config_conf)

    def merge(dst: Dict[str, Any], src: Mapping[str, Any]) -> None:
        for key, value in src.items():
            if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = copy.deepcopy(value)

    merge(config, namespace_fields(node_name, mode, kubeconfig))
    return config


def prepare_node(host: Host, via: str = NETNS_ADDRESS) -> None:
    """What every node has and a fresh namespace lacks, set inside the host's namespace only.

    A default route: a connection to a ClusterIP is routed before kube-proxy's DNAT rewrites it, and with no
    route at all connect() fails with "Network is unreachable" before any rule is consulted. IPv4 forwarding
    (kubelet and every CNI need it; 0 in a new namespace): a NodePort connection from another host is DNATed to
    an endpoint elsewhere, so the node forwards it.
    """
    host.run(["ip", "route", "replace", "default", "via", via, "dev", "eth0"])
    host.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])


def curl(host: Host, url: str, timeout: float = 3.0) -> Tuple[int, str]:
    """GET *url* from inside *host* with curl: (HTTP status, body); status 0 when nothing answered in time."""
    proc = host.run(["curl", "-s", "--max-time", str(timeout), "-o", "/dev/stdout", "-w", "\n%{http_code}", url],
                    check=False)
    body, _sep, code = proc.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


@dataclass
class KubeProxy:
    """One kube-proxy process in one netns host."""

    host: Host
    mode: str
    binary: Path
    config: Path
    log: Path
    proc: Optional[subprocess.Popen] = None
    started: float = field(default_factory=time.monotonic)

    def get(self, path: str, port: Optional[int] = None, timeout: float = 3.0) -> Tuple[int, str]:
        """An HTTP GET inside the host (curl in the namespace): /proxyMode and /metrics on the metrics port,
        /healthz and /livez on the healthz port; (status, body), status 0 when nothing answered."""
        if port is None:
            port = METRICS_PORT if path.startswith(("/proxyMode", "/metrics", "/configz")) else HEALTHZ_PORT
        return curl(self.host, f"http://127.0.0.1:{port}{path}", timeout)

    def wait_healthy(self, seconds: float = START_TIMEOUT) -> float:
        """Wait for /healthz 200 (kube-proxy has synced its rules once); returns the seconds since start."""
        deadline = time.monotonic() + seconds
        last = (0, "")
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"kube-proxy ({self.mode}) in {self.host.name} exited "
                                   f"({self.proc.returncode if self.proc else '-'}); its last lines:\n{self.tail()}")
            last = self.get("/healthz")
            if last[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.2)
        raise RuntimeError(f"kube-proxy ({self.mode}) in {self.host.name}: /healthz not 200 within {seconds:.0f} s "
                           f"(last {last}); its last lines:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, seconds: float = 10.0) -> Optional[int]:
        """SIGTERM and wait, as the kubelet stops a pod; SIGKILL after *seconds*. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(seconds)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_kube_proxy(cluster: Cluster, host: Host, mode: str, server: str, workdir: Path,
                     extra_fields: Optional[Mapping[str, Any]] = None, verbosity: int = 2,
                     config_conf: Optional[str] = None) -> KubeProxy:
    """Create the host's Node, write its kubeconfig and configuration, start kube-proxy in its namespace.

    Does not wait: ``wait_healthy()`` does. *server* is the API server's URL as the host dials it
    (``cluster.expose_to_lab(lab.switch)``). *config_conf*: the ConfigMap's config.conf to start from (as a pod
    mounts it; tests/harness/kube/kubelet_standin.py), by default the cluster's as it is now.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: a netns host runs {' or '.join(MODES)} (no IP_VS in this kernel)")
    workdir = Path(workdir) / f"{host.name}-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    cluster.create_node(host.name, host.v4)
    prepare_node(host)
    kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig.conf", KUBE_PROXY_USER, server)
    base = cluster.kube_proxy_config_conf() if config_conf is None else config_conf
    config = kube_proxy_config(base, host.name, mode, kubeconfig)
    if extra_fields:
        config.update(copy.deepcopy(dict(extra_fields)))
    config_path = workdir / "config.conf"
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    log = workdir / "kube-proxy.log"
    binary = cluster.bin_dir / "kube-proxy"
    # Ended with the test session even when it is killed (a kube-proxy left behind would keep a lab alive).
    argv: List[str] = [*PDEATHSIG, "ip", "netns", "exec", host.netns, *NICE, str(binary), "--config", str(config_path),
                       f"--v={verbosity}"]
    with open(log, "ab") as fh:
        # setpriv, `ip netns exec` and nice exec(2) into kube-proxy: the pid is kube-proxy's, SIGTERM reaches it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "LC_ALL": "C"})
    return KubeProxy(host, mode, binary, config_path, log, proc)
