"""A relay on 127.0.0.1 in front of the real kube-apiserver, to time a fault or a concurrent writer exactly.

The collection's API client (plugins/module_utils/_kubeapi.py, urllib) opens one TCP connection per request, so
"the Nth request" of a module run is "the Nth connection" here, whatever TLS carries inside it:

    relay = ApiRelay(cluster, before={2: other_writer}).start()   # other_writer() runs before request 2 is relayed
    relay = ApiRelay(cluster, connections=3).start()              # relays 3 connections, then stops listening:
                                                                  # request 4 on is refused, as a dead API server
    kubeconfig = relay.kubeconfig(path)                           # admin, server https://127.0.0.1:<relay port>
    relay.accepted                                                # connections seen so far

The serving certificate names 127.0.0.1, so TLS verifies as it does against the API server itself.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Mapping, Optional

from tests.harness.kube.cluster import LOOPBACK, Cluster, Forwarder


class ApiRelay(Forwarder):
    def __init__(self, cluster: Cluster, *, connections: Optional[int] = None,
                 before: Optional[Mapping[int, Callable[[], None]]] = None) -> None:
        super().__init__("", (LOOPBACK, 0), (LOOPBACK, cluster.ports.api))
        self.cluster = cluster
        self.connections = connections
        self.before = dict(before or {})
        self.accepted = 0
        self.port = 0

    def _listen(self) -> socket.socket:
        sock = socket.create_server((LOOPBACK, 0))
        self.port = sock.getsockname()[1]
        return sock

    def _accepted(self, client: socket.socket) -> None:
        self.accepted += 1
        if self.connections is not None and self.accepted >= self.connections:
            # the last one relayed: nothing listens any more, the next connect() is refused
            assert self._sock is not None
            self._sock.close()
            self._stop.set()
        hook = self.before.get(self.accepted)
        if hook is not None:
            hook()

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """The cluster's admin.conf with this relay as its server."""
        path = Path(path)
        admin = self.cluster.admin_conf.read_text()
        path.write_text(admin.replace(f"server: {self.cluster.server}\n", f"server: {self.server}\n"))
        path.chmod(0o600)
        return path
