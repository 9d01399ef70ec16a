"""A STAND-IN for kubelet (and for the DaemonSet controller) in front of the real kube-apiserver.

No kubelet, controller-manager or scheduler can run here (tests/README-kube.md), so nothing would ever act on the
kube-proxy DaemonSet that kubeadm created. This stand-in does the two things of theirs that the kube_proxy role's
cluster target depends on, against the real API server of cluster.py:

- kubelet's part: it polls the DaemonSet (a GET every *interval* seconds); when its pod template changes (the
  ``kubectl.kubernetes.io/restartedAt`` annotation kube_proxy_rollout patches, or any other template change) it
  restarts each node's kube-proxy, node by node in name order, with the ConfigMap's config.conf as it is at that
  moment (kubelet remounts the ConfigMap in the new pod; kube-proxy reads its configuration only at start);
- the DaemonSet controller's part: it writes the DaemonSet's status through the status subresource
  (observedGeneration, desiredNumberScheduled, currentNumberScheduled, updatedNumberScheduled, numberReady,
  numberAvailable, numberUnavailable), one node down at a time (kubeadm's RollingUpdate, maxUnavailable 1),
  and counts a node updated once its kube-proxy answers /healthz.

What a "restart" is belongs to the caller, one callable per node taking the config.conf text: it restarts that
node's kube-proxy and returns once it answers /healthz, or raises (the rollout then stalls at that node, as a
DaemonSet rollout stalls on a pod that never becomes ready). A callable with a ``stop()`` is stopped by ``stop()``.

    standin = KubeletStandIn(cluster, nodes={"h1": NetnsNode(cluster, h1, server, workdir), ...}).start()
    standin = KubeletStandIn(cluster, nodes={"kubenode-vm": vm_restart})    # e.g. ssh: write config, systemctl restart
    standin.restarts                       # [(node, mode the config selects), ...] in order
    standin.settle()                       # caught up with the DaemonSet
    standin.stop()

``start()`` first starts every node's kube-proxy with the current config.conf (the pods kubelet starts when the
DaemonSet is created) and writes the status of a DaemonSet whose pods are all up to date.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import yaml

from tests.harness.kube.cluster import NAMESPACE, ApiError, Cluster, ClusterError
from tests.harness.kube.netns_proxy import KubeProxy, start_kube_proxy
from tests.harness.netns_hosts import Host

CONFIGMAP = "kube-proxy"
DAEMONSET = "kube-proxy"
CONFIG_KEY = "config.conf"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STATUS_COUNTS = ("desiredNumberScheduled", "currentNumberScheduled", "numberMisscheduled", "updatedNumberScheduled",
                 "numberReady", "numberAvailable", "numberUnavailable")
LOG = logging.getLogger(__name__)

Restart = Callable[[str], Any]


def mode_of(config_text: str) -> str:
    """The mode a config.conf selects, as kube-proxy reads it on Linux ("" is iptables)."""
    return (yaml.safe_load(config_text) or {}).get("mode") or "iptables"


class NetnsNode:
    """A node's restart for a netns host: SIGTERM its kube-proxy process, start the real one with the text given."""

    def __init__(self, cluster: Cluster, host: Host, server: str, workdir: Path) -> None:
        self.cluster = cluster
        self.host = host
        self.server = server
        self.workdir = Path(workdir)
        self.proxy: Optional[KubeProxy] = None

    def __call__(self, config_text: str) -> None:
        self.stop()
        self.proxy = start_kube_proxy(self.cluster, self.host, mode_of(config_text), self.server, self.workdir,
                                      config_conf=config_text)
        self.proxy.wait_healthy()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()


class KubeletStandIn:
    """Polls the kube-proxy DaemonSet and rolls each node's kube-proxy when its pod template changes."""

    def __init__(self, cluster: Cluster, nodes: Mapping[str, Restart], *, namespace: str = NAMESPACE,
                 daemonset: str = DAEMONSET, configmap: str = CONFIGMAP, interval: float = 0.2) -> None:
        self.cluster = cluster
        self.nodes = dict(sorted(nodes.items()))
        self.ds_path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{daemonset}"
        self.cm_path = f"/api/v1/namespaces/{namespace}/configmaps/{configmap}"
        self.interval = interval
        self.restarts: List[Tuple[str, str]] = []
        self.errors: List[str] = []
        self.template: Optional[str] = None   # the pod template every node runs (JSON, sorted keys)
        self.observed = 0                     # the generation whose status was written last
        self.paused = threading.Event()       # while set, the stand-in neither restarts nor writes status
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._busy = False

    # -- the API --
    def config_text(self) -> str:
        return self.cluster.api("GET", self.cm_path)["data"][CONFIG_KEY]

    def _daemonset(self) -> Tuple[int, str]:
        ds = self.cluster.api("GET", self.ds_path)
        return int(ds["metadata"].get("generation") or 0), json.dumps(ds["spec"]["template"], sort_keys=True)

    def _status(self, generation: int, updated: int, available: int, desired: Optional[int] = None) -> None:
        desired = len(self.nodes) if desired is None else desired
        status = {"observedGeneration": generation, "desiredNumberScheduled": desired,
                  "currentNumberScheduled": desired, "numberMisscheduled": 0, "updatedNumberScheduled": updated,
                  "numberReady": available, "numberAvailable": available, "numberUnavailable": desired - available}
        self.cluster.api("PATCH", f"{self.ds_path}/status", {"status": status},
                         content_type="application/merge-patch+json")
        self.observed = generation

    # -- kubelet's and the controller's work --
    def _restart(self, name: str) -> bool:
        text = self.config_text()
        self.restarts.append((name, mode_of(text)))
        try:
            self.nodes[name](text)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever failed, that node's pod is not ready: the rollout stalls
            self.errors.append(f"{name}: {exc}")
            LOG.warning("kubelet stand-in: kube-proxy on %s did not come up: %s", name, exc)
            return False

    def _roll(self, generation: int) -> None:
        desired = len(self.nodes)
        # The controller has seen the new template; no pod runs it yet, every old one is available.
        self._status(generation, 0, desired)
        for done, name in enumerate(self.nodes):
            self._status(generation, done, desired - 1)
            if not self._restart(name):
                return   # stalled: this node stays unavailable, the next ones keep their old pod
            self._status(generation, done + 1, desired)

    def _tick(self) -> None:
        generation, template = self._daemonset()
        if template != self.template:
            self._busy = True
            try:
                self.template = template
                self._roll(generation)
            finally:
                self._busy = False
        elif generation != self.observed:
            # a change outside the pod template (the update strategy, say): nothing to restart
            self._status(generation, len(self.nodes), len(self.nodes))

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.paused.is_set():
                try:
                    self._tick()
                except (ClusterError, OSError) as exc:   # the API server slow or restarting: the next tick retries
                    LOG.warning("kubelet stand-in: %s", exc)
            self._stop.wait(self.interval)

    # -- life cycle --
    def start(self) -> "KubeletStandIn":
        """Start every node's kube-proxy with the current config.conf, then follow the DaemonSet."""
        generation, self.template = self._daemonset()
        for name in self.nodes:
            if not self._restart(name):
                raise ClusterError(f"kubelet stand-in: kube-proxy did not start on {self.errors[-1]}")
        self._status(generation, len(self.nodes), len(self.nodes))
        self._thread = threading.Thread(target=self._loop, name="kubelet-standin", daemon=True)
        self._thread.start()
        return self

    def settle(self, seconds: float = 60.0) -> None:
        """Wait until the stand-in has caught up with the DaemonSet: no rollout under way, the last change seen."""
        deadline = time.monotonic() + seconds
        while True:
            generation, template = self._daemonset()
            if not self._busy and template == self.template and generation == self.observed:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"kubelet stand-in: not caught up with the DaemonSet within {seconds:.0f} s")
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        for restart in self.nodes.values():
            stop = getattr(restart, "stop", None)
            if stop is not None:
                stop()

    def reset_status(self) -> None:
        """The status of a DaemonSet nothing acts on (as cluster.py leaves it), for the next user of the cluster."""
        try:
            generation, _template = self._daemonset()
        except ApiError:
            return
        status: Dict[str, int] = dict.fromkeys(STATUS_COUNTS, 0)
        status["observedGeneration"] = generation
        self.cluster.api("PATCH", f"{self.ds_path}/status", {"status": status},
                         content_type="application/merge-patch+json")


def restore(cluster: Cluster, config_text: str) -> None:
    """Put kubeadm's config.conf back and take the restart annotation off the pod template (test teardown)."""
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CONFIGMAP}"
    cm = cluster.api("GET", path)
    if cm["data"].get(CONFIG_KEY) != config_text:
        cm["data"][CONFIG_KEY] = config_text
        cluster.api("PUT", path, cm)
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: None}}}}}
    cluster.api("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{DAEMONSET}", patch,
                content_type="application/strategic-merge-patch+json")
