"""STUB of the Kubernetes API server for the kube_proxy tests. It is not a Kubernetes API server.

No kube-apiserver (nor kube-proxy) binary can be obtained on the test machines, so the cluster
target of the kube_proxy role is tested against this stub. It serves the few calls the
collection makes, the way the real API server answers them:

- HTTPS on 127.0.0.1 with a CA, a server certificate and a client certificate made at start
  (RSA 2048, as kubeadm's defaults), and an admin.conf kubeconfig with the certificates embedded
  as base64 data, like the one `kubeadm init` writes. Clients without a certificate signed by the
  CA are refused during the TLS handshake.
- ConfigMap kube-system/kube-proxy: GET, and PUT with optimistic concurrency (a PUT whose
  metadata.resourceVersion is not the current one gets 409 Conflict with the API server's Status
  object; every write bumps resourceVersion).
- DaemonSet kube-system/kube-proxy: GET, and PATCH (strategic-merge or merge patch). A change of
  the pod template (the kubectl.kubernetes.io/restartedAt annotation of `kubectl rollout
  restart`) bumps metadata.generation and starts a rolling update: after a moment
  status.observedGeneration catches up, then node by node the "pod" restarts with the
  ConfigMap's config.conf as it is at that moment (kube-proxy reads its configuration only at
  start) and updatedNumberScheduled / numberAvailable climb back to desiredNumberScheduled.
- Each node's "pod" is a callback given by the test: it restarts the /proxyMode stand-in on that
  node (tests/harness/proxymode_standin.py) with the configuration the pod would run.

Everything else answers 404 with a Status object. Tests drive it from Python (``requests`` is the
log of calls, ``inject_conflicts`` simulates a concurrent writer).

    python3 tests/harness/kube_api_stub.py --dir build/kube-api-stub   # serves until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import http.server
import ipaddress
import json
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CONFIGMAP_PATH = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DAEMONSET_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

# config.conf as `kubeadm init` v1.32 writes it (tests/unit/fixtures/kube_proxy/kubeadm-1.32-configmap-config.conf)
DEFAULT_CONFIG = (Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "kube_proxy"
                  / "kubeadm-1.32-configmap-config.conf")
KUBECONFIG_CONF = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: https://{server}
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"""


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool = False,
          san: list | None = None, client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=True,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, the API server's certificate for 127.0.0.1 and kubernetes-admin's client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server_key, ca_name, ca_key,
                   san=[x509.DNSName("kubernetes"), x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    admin_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    admin = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubeadm:cluster-admins"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin")]),
                  admin_key, ca_name, ca_key, client=True)
    files = {
        "ca.crt": _pem_cert(ca), "ca.key": _pem_key(ca_key),
        "apiserver.crt": _pem_cert(server), "apiserver.key": _pem_key(server_key),
        "admin.crt": _pem_cert(admin), "admin.key": _pem_key(admin_key),
    }
    out = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        out[name] = path
    return out


def admin_conf(server: str, pki: dict[str, Path]) -> str:
    """A kubeconfig shaped like kubeadm's /etc/kubernetes/admin.conf."""
    b64 = {k: base64.b64encode(pki[k].read_bytes()).decode() for k in ("ca.crt", "admin.crt", "admin.key")}
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {b64['ca.crt']}\n    server: {server}\n  name: kubernetes\n"
        "contexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n"
        "  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\n"
        "preferences: {}\nusers:\n- name: kubernetes-admin\n  user:\n"
        f"    client-certificate-data: {b64['admin.crt']}\n    client-key-data: {b64['admin.key']}\n"
    )


def _merge_patch(target, patch):
    """RFC 7386; for the maps of a DaemonSet's pod template it is what a strategic merge does."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


class KubeApiStub:
    """The stub: a thread serving HTTPS on 127.0.0.1. See the module docstring."""

    def __init__(self, workdir: Path, nodes: dict[str, Callable[[str], None]] | None = None,
                 config: str | None = None, tick: float = 0.3) -> None:
        self.workdir = Path(workdir)
        self.nodes = dict(nodes or {})
        self.tick = tick
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []
        self._rv = 1000
        self._conflicts: list[Callable[[str], str]] = []
        self.pod_starts: dict[str, list[str]] = {name: [] for name in self.nodes}
        self.configmap: dict = {}
        self.daemonset: dict = {}
        self._initial_config = config if config is not None else DEFAULT_CONFIG.read_text()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.kubeconfig = self.workdir / "admin.conf"
        self.url = ""

    # ---- lifecycle ----

    def start(self) -> "KubeApiStub":
        pki = make_pki(self.workdir / "pki")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["apiserver.crt"], pki["apiserver.key"])
        context.load_verify_locations(cafile=str(pki["ca.crt"]))
        context.verify_mode = ssl.CERT_REQUIRED
        stub = self

        class Handler(_Handler):
            api = stub

        self.server = _TLSServer(("127.0.0.1", 0), Handler, context)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig.write_text(admin_conf(self.url, pki))
        self.kubeconfig.chmod(0o600)
        self._seed()
        self.thread = threading.Thread(target=self.server.serve_forever, name="kube-api-stub", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> "KubeApiStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _seed(self) -> None:
        server = self.url.replace("https://", "")
        self.configmap = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"},
                         "annotations": {"kubeadm.kubernetes.io/component-config.hash": "sha256:stub"},
                         "uid": "00000000-0000-4000-8000-000000000001", "resourceVersion": self._next_rv(),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "data": {"config.conf": self._initial_config, "kubeconfig.conf": KUBECONFIG_CONF.format(server=server)},
        }
        count = len(self.nodes)
        self.daemonset = {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"},
                         "generation": 1, "resourceVersion": self._next_rv(),
                         "uid": "00000000-0000-4000-8000-000000000002"},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-proxy"}},
                    "spec": {"containers": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.32.0",
                                             "command": ["/usr/local/bin/kube-proxy",
                                                         "--config=/var/lib/kube-proxy/config.conf",
                                                         "--hostname-override=$(NODE_NAME)"]}]},
                },
            },
            "status": {"currentNumberScheduled": count, "desiredNumberScheduled": count, "numberAvailable": count,
                       "numberMisscheduled": 0, "numberReady": count, "observedGeneration": 1,
                       "updatedNumberScheduled": count},
        }
        for name in self.nodes:
            self._start_pod(name)

    # ---- what the tests look at and drive ----

    def config_text(self) -> str:
        with self.lock:
            return self.configmap["data"]["config.conf"]

    def set_config_text(self, text: str) -> None:
        """Change config.conf as `kubectl edit` would (pods keep running their old configuration)."""
        with self.lock:
            self.configmap["data"]["config.conf"] = text
            self.configmap["metadata"]["resourceVersion"] = self._next_rv()

    def calls(self, method: str, path: str) -> int:
        return sum(1 for m, p, _s in self.requests if m == method and p.split("?")[0] == path)

    @property
    def restarts(self) -> int:
        """Rolling restarts started (pod template changes)."""
        return int(self.daemonset["metadata"]["generation"]) - 1

    def inject_conflicts(self, *writers: Callable[[str], str]) -> None:
        """The next len(writers) PUTs of the ConfigMap each find that another client changed
        config.conf (with that function) after it was read: they get 409, as from the real API server."""
        with self.lock:
            self._conflicts.extend(writers)

    # ---- rollout ----

    def _start_pod(self, node: str) -> None:
        text = self.config_text()
        self.pod_starts.setdefault(node, []).append(text)
        self.nodes[node](text)

    def _rollout(self, generation: int) -> None:
        time.sleep(self.tick)
        with self.lock:
            if self.daemonset["metadata"]["generation"] != generation:
                return
            st = self.daemonset["status"]
            st.update(observedGeneration=generation, updatedNumberScheduled=0)
        for node in list(self.nodes):
            with self.lock:
                if self.daemonset["metadata"]["generation"] != generation:
                    return
                self.daemonset["status"]["numberAvailable"] -= 1
                self.daemonset["status"]["numberReady"] -= 1
            self._start_pod(node)
            time.sleep(self.tick)
            with self.lock:
                st = self.daemonset["status"]
                st["updatedNumberScheduled"] += 1
                st["numberAvailable"] += 1
                st["numberReady"] += 1

    # ---- HTTP ----

    def handle(self, method: str, path: str, body: dict | None, content_type: str) -> tuple[int, dict]:
        with self.lock:
            if path == CONFIGMAP_PATH:
                if method == "GET":
                    return 200, copy.deepcopy(self.configmap)
                if method == "PUT":
                    return self._put_configmap(body)
            elif path == DAEMONSET_PATH:
                if method == "GET":
                    return 200, copy.deepcopy(self.daemonset)
                if method == "PATCH":
                    return self._patch_daemonset(body, content_type)
            else:
                return 404, status(404, "NotFound", f"the server could not find the requested resource ({path})")
            return 405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _put_configmap(self, body: dict | None) -> tuple[int, dict]:
        if not isinstance(body, dict) or body.get("kind") != "ConfigMap":
            return 400, status(400, "BadRequest", "the body of the request is not a ConfigMap")
        if self._conflicts:
            writer = self._conflicts.pop(0)
            self.set_config_text(writer(self.config_text()))
        sent = body.get("metadata", {}).get("resourceVersion")
        if sent and sent != self.configmap["metadata"]["resourceVersion"]:
            return 409, status(409, "Conflict", 'Operation cannot be fulfilled on configmaps "kube-proxy": the object '
                               "has been modified; please apply your changes to the latest version and try again",
                               {"name": "kube-proxy", "kind": "configmaps"})
        meta = dict(self.configmap["metadata"])
        meta["resourceVersion"] = self._next_rv()
        self.configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(body.get("data") or {})}
        return 200, copy.deepcopy(self.configmap)

    def _patch_daemonset(self, body: dict | None, content_type: str) -> tuple[int, dict]:
        if content_type not in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            return 415, status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        before = copy.deepcopy(self.daemonset["spec"]["template"])
        self.daemonset = _merge_patch(self.daemonset, body or {})
        self.daemonset["metadata"]["resourceVersion"] = self._next_rv()
        if self.daemonset["spec"]["template"] != before:
            generation = int(self.daemonset["metadata"]["generation"]) + 1
            self.daemonset["metadata"]["generation"] = generation
            threading.Thread(target=self._rollout, args=(generation,), daemon=True).start()
        return 200, copy.deepcopy(self.daemonset)


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        # refused TLS handshakes (no or a foreign client certificate) are expected in tests
        pass

    def get_request(self):
        sock, addr = self.socket.accept()
        # handshake in the request thread, so a client that stalls cannot block the server
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class _Handler(http.server.BaseHTTPRequestHandler):
    api: KubeApiStub
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            self.request.close()
            raise
        super().setup()

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            code, reply = 400, status(400, "BadRequest", "the body of the request is not JSON")
        else:
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            code, reply = self.api.handle(method, self.path.split("?")[0], body, content_type)
        self.api.requests.append((method, self.path, code))
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def log_message(self, *args) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the PKI and admin.conf are written")
    parser.add_argument("--nodes", default="node-1", help="comma-separated node names (their pods only log)")
    args = parser.parse_args()

    def pod(node: str) -> Callable[[str], None]:
        def start(text: str) -> None:
            mode = (yaml.safe_load(text) or {}).get("mode") or "iptables"
            print(f"[stub] kube-proxy pod on {node} (re)started with mode {mode}", flush=True)
        return start

    nodes = {name: pod(name) for name in args.nodes.split(",")}
    stub = KubeApiStub(args.dir, nodes).start()
    print(f"Kubernetes API STUB on {stub.url}; kubeconfig {stub.kubeconfig}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
