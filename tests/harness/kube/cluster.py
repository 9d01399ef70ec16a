"""A real one-node Kubernetes control plane for the tests: etcd and kube-apiserver on 127.0.0.1.

The binaries are the ones build.py builds from upstream source. No kubelet, controller-manager or
scheduler runs: nothing starts pods. The tests create what those would (Nodes, EndpointSlices).

    python3 tests/harness/kube/cluster.py up      # starts it (or finds it running); prints admin.conf's path
    python3 tests/harness/kube/cluster.py down    # stops every process it started and removes the state
    python3 tests/harness/kube/cluster.py kubeconfig --user system:kube-proxy --server https://10.0.2.2:26443 -o FILE
    python3 tests/harness/kube/cluster.py expose --inventory build/inventory-netns.yml   # into a netns lab

Addresses: the API server listens on 127.0.0.1:26443 only (etcd on 127.0.0.1:23790/23800, plain HTTP, loopback
only). The VM reaches it as https://10.0.2.2:26443 (QEMU user networking hands connections to its gateway to
the host's loopback). Network namespaces cannot reach the host's loopback, so a netns lab gets a forwarder
(``Forwarder``): a socket listening on 198.18.0.254:26443 inside the lab's switch namespace (the address is put on
its bridge, which every host is plugged into), whose connections this process relays to 127.0.0.1:26443 in its own
namespace. Nothing is added to the host's own network namespace. The serving certificate names all of them.

State (certificates, etcd data, logs, pid files) lives under build/kube/cluster/ (``--dir`` elsewhere).
From Python: ``Cluster(state_dir).start()``, ``cluster.api("GET", "/api/v1/nodes")``, ``cluster.stop()``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.harness.kube import build  # noqa: E402
from tests.harness.kube import kubeadm_addon  # noqa: E402

STATE_DIR = build.BUILD_ROOT / "cluster"
# Ports that no common service uses, so that a cluster of the tests never meets a real one on this machine.
ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
API_PORT = 26443
LOOPBACK = "127.0.0.1"
# QEMU user networking: the guest's gateway, connected by QEMU to the host's 127.0.0.1 (tests/harness/vm/vm.py).
VM_ADDRESS = "10.0.2.2"
# The control plane's address on a netns lab's bridge (198.18.0.0/24, tests/harness/netns_hosts.py): the lab's hosts
# count up from .1, so the top of the range stays free.
NETNS_ADDRESS = "198.18.0.254"
NETNS_PREFIX = 24
SERVICE_CIDR = "10.96.0.0/12"
SERVICE_IP = "10.96.0.1"   # the first address of SERVICE_CIDR: the `kubernetes` Service the API server makes
CLUSTER_NAME = "kubernetes"
ADMIN_USER = "kubernetes-admin"
ADMIN_GROUPS = ("system:masters",)
KUBE_PROXY_USER = "system:kube-proxy"
SERVING_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local")
SERVING_IPS = (LOOPBACK, VM_ADDRESS, NETNS_ADDRESS, SERVICE_IP)
NAMESPACE = "kube-system"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The machine is shared (2 cores): the control plane takes its CPU after others.
NICE = ("nice", "-n", "10")
# For processes owned by a test session: SIGTERM when the session's process dies, even by SIGKILL, when no
# finaliser or atexit hook runs (util-linux's setpriv; the signal survives the exec of nice and the binary).
PDEATHSIG = ("setpriv", "--pdeathsig", "TERM", "--")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
CLONE_NEWNET = 0x40000000


class ClusterError(RuntimeError):
    """The cluster could not be started or a request failed; ``str()`` is one sentence."""


class ApiError(ClusterError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body


# ---- certificates, made with the openssl program ----

def _openssl(args: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=str(cwd), capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _subject(cn: str, groups: Iterable[str] = ()) -> str:
    # Kubernetes reads the user from CN and the groups from O (several O's, several groups).
    return "".join(f"/O={g}" for g in groups) + f"/CN={cn}"


class Pki:
    """The cluster's CA and the certificates signed by it, as files in one directory (kubeadm's layout names)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, name: str) -> Path:
        return self.dir / name

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        # RSA 2048 and SHA-256: kubeadm's defaults. One year is plenty for a test cluster.
        _openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "365",
                  "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=kubernetes",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"], self.dir)
        san = ",".join([*(f"DNS:{d}" for d in SERVING_DNS), *(f"IP:{a}" for a in SERVING_IPS)])
        self._leaf("apiserver", "/CN=kube-apiserver", "serverAuth", san)
        self.client("admin", ADMIN_USER, ADMIN_GROUPS)
        self.client("kube-proxy", KUBE_PROXY_USER)
        # The service-account signing pair (sa.key / sa.pub, as kubeadm names them).
        _openssl(["genrsa", "-out", "sa.key", "2048"], self.dir)
        _openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], self.dir)

    def client(self, name: str, user: str, groups: Iterable[str] = ()) -> Tuple[Path, Path]:
        """A client certificate (name.crt, name.key) for *user* in *groups*; made once, then reused."""
        crt, key = self.path(f"{name}.crt"), self.path(f"{name}.key")
        if not (crt.exists() and key.exists()):
            self._leaf(name, _subject(user, groups), "clientAuth")
        return crt, key

    def _leaf(self, name: str, subject: str, usage: str, san: str = "") -> None:
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               f"extendedKeyUsage={usage}", "authorityKeyIdentifier=keyid"]
        if san:
            ext.append(f"subjectAltName={san}")
        with tempfile.NamedTemporaryFile("w", dir=self.dir, suffix=".ext", delete=False) as fh:
            fh.write("[v3]\n" + "\n".join(ext) + "\n")
            extfile = fh.name
        try:
            _openssl(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                      "-out", f"{name}.csr", "-subj", subject], self.dir)
            _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "365", "-sha256",
                      "-extfile", extfile, "-extensions", "v3", "-out", f"{name}.crt"], self.dir)
        finally:
            os.unlink(extfile)
            self.path(f"{name}.csr").unlink(missing_ok=True)
        os.chmod(self.path(f"{name}.key"), 0o600)


def kubeconfig_text(server: str, user: str, ca: bytes, cert: bytes, key: bytes, cluster: str = CLUSTER_NAME) -> str:
    """A kubeconfig as kubeadm writes one (kubeconfig.CreateWithCerts, then clientcmd's YAML: sorted keys,
    context ``user@cluster``, certificates embedded as base64 data; client-go v0.37 omits empty preferences)."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()
    context = f"{user}@{cluster}"
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {b64(ca)}\n    server: {server}\n  name: {cluster}\n"
        f"contexts:\n- context:\n    cluster: {cluster}\n    user: {user}\n  name: {context}\n"
        f"current-context: {context}\nkind: Config\n"
        f"users:\n- name: {user}\n  user:\n"
        f"    client-certificate-data: {b64(cert)}\n    client-key-data: {b64(key)}\n"
    )


# ---- network namespaces: a socket that listens in one, relayed to this process's own ----

def _setns(fd: int) -> None:
    if hasattr(os, "setns"):   # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def listen_in_netns(netns: str, address: str, port: int) -> socket.socket:
    """A TCP socket listening on address:port inside *netns*, usable from any thread of this process.

    A socket stays in the namespace it was made in. setns(2) moves only the calling thread, so a short-lived
    thread enters the namespace, makes the socket and ends; the rest of the process never leaves its own.
    """
    result: Dict[str, Any] = {}

    def worker() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            result["sock"] = sock
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=worker, name=f"listen-in-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise ClusterError(f"cannot listen on {address}:{port} in network namespace {netns}: {result['error']}")
    return result["sock"]


class Forwarder:
    """Relays TCP connections accepted in a network namespace to an address in this process's namespace.

    TLS passes through untouched (the client verifies the API server's certificate, which names the address it
    dialled); one thread per direction and connection is plenty for kube-proxy's one long watch connection.
    """

    def __init__(self, netns: str, listen: Tuple[str, int], target: Tuple[str, int]) -> None:
        self.netns = netns
        self.listen = listen
        self.target = target
        self._sock: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Forwarder":
        self._sock = self._listen()
        # A timeout on accept, not close() from another thread: close does not wake a blocked accept on Linux.
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept_loop, name=f"forward-{self.netns}", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> socket.socket:
        return listen_in_netns(self.netns, *self.listen)

    def _accepted(self, client: socket.socket) -> None:
        """Called with each connection accepted, before it is relayed (a subclass times faults here)."""

    def serve_forever(self) -> None:
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(1.0)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                client, _peer = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self._accepted(client)
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Half-close so the other direction drains; the last pump of a pair closes both.
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                try:
                    sock.shutdown(how)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns = []


def add_bridge_address(switch_netns: str, address: str = NETNS_ADDRESS, prefix: int = NETNS_PREFIX,
                       bridge: str = "br0") -> None:
    """Put *address* on a netns lab's bridge, in the lab's switch namespace (never in the host's)."""
    subprocess.run(["ip", "-n", switch_netns, "addr", "replace", f"{address}/{prefix}", "dev", bridge],
                   check=True, capture_output=True, text=True)


# ---- the processes ----

def _pid_alive(pid: int, binary: Path) -> bool:
    """True if *pid* runs *binary* (not another program that got the number after ours exited)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        return False
    return bool(argv) and os.fsdecode(argv[0]) == str(binary)


def _wait_gone(pid: int, binary: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            # Our own child: reap it, or it stays a zombie that /proc still lists.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not _pid_alive(pid, binary):
            return True
        time.sleep(0.1)
    return False


def terminate(pid: int, binary: Path, seconds: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after *seconds*: the pid only, never a name."""
    if not _pid_alive(pid, binary):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, binary, seconds):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, binary, 5.0)


@dataclass
class Ports:
    etcd_client: int = ETCD_CLIENT_PORT
    etcd_peer: int = ETCD_PEER_PORT
    api: int = API_PORT

    @classmethod
    def free(cls) -> "Ports":
        """Three ports the kernel has free now: for a cluster of one test session, beside a `make cluster-up` one."""
        socks = []
        try:
            for _attempt in range(3):
                s = socket.socket()
                s.bind((LOOPBACK, 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


class Cluster:
    """etcd and kube-apiserver of one state directory; start() is idempotent, stop() removes the state."""

    def __init__(self, state_dir: Path = STATE_DIR, ports: Optional[Ports] = None,
                 bin_dir: Optional[Path] = None, owned: bool = False) -> None:
        """*owned*: the processes end with this Python process (a test session), not outlive it (`make cluster-up`)."""
        self.dir = Path(state_dir).resolve()
        self.owned = owned
        self._ports = ports
        self._bin_dir = bin_dir
        self.pki = Pki(self.dir / "pki")
        self._forwarders: Dict[str, Forwarder] = {}
        self._ssl: Optional[ssl.SSLContext] = None
        # The processes this object started: polled during the start, when argv[0] may still be `nice`.
        self._procs: Dict[str, subprocess.Popen] = {}

    # -- layout --
    @property
    def ports(self) -> Ports:
        if self._ports is None:
            saved = self.dir / "ports.json"
            self._ports = Ports(**json.loads(saved.read_text())) if saved.exists() else Ports()
        return self._ports

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            saved = self.dir / "bin_dir"
            self._bin_dir = Path(saved.read_text().strip()) if saved.exists() else build.ensure_binaries()
        return self._bin_dir

    @property
    def admin_conf(self) -> Path:
        return self.dir / "admin.conf"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.api}"

    def url(self, address: str) -> str:
        """The API server's URL as a client at *address* (127.0.0.1, 10.0.2.2, 198.18.0.254) dials it."""
        return f"https://{address}:{self.ports.api}"

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _pidfile(self, name: str) -> Path:
        return self.dir / "run" / f"{name}.pid"

    def _binary(self, name: str) -> Path:
        return self.bin_dir / name

    def _pid(self, name: str, binary: Optional[Path] = None) -> Optional[int]:
        try:
            pid = int(self._pidfile(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid, binary or self._binary(name)) else None

    # -- life cycle --
    def _alive(self) -> bool:
        if not self.admin_conf.exists() or not (self.dir / "bin_dir").exists():
            return False
        return self._pid("etcd") is not None and self._pid("kube-apiserver") is not None

    def running(self, patience: float = 0.0) -> bool:
        """Both processes alive and the API server ready (within *patience* seconds: a loaded machine may be slow)."""
        deadline = time.monotonic() + patience
        while self._alive():
            try:
                if self._get_raw("/readyz")[0] == 200:
                    return True
            except (OSError, ssl.SSLError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        return False

    def start(self) -> "Cluster":
        # Live processes that are slow to answer are waited for, not restarted.
        if self.running(patience=30.0):
            return self
        # Half a cluster (one process died, an interrupted start) is not repaired: start from nothing.
        self.stop()
        started = time.monotonic()
        bin_dir = build.ensure_binaries() if self._bin_dir is None else self._bin_dir
        self._bin_dir = bin_dir
        for sub in ("run", "logs", "etcd"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "etcd", 0o700)   # etcd refuses a data directory others can read
        (self.dir / "ports.json").write_text(json.dumps(self.ports.__dict__) + "\n")
        (self.dir / "bin_dir").write_text(f"{bin_dir}\n")
        self.pki.create()
        self._write_admin_conf()
        try:
            self._spawn("etcd", self._etcd_argv())
            self._spawn("kube-apiserver", self._apiserver_argv())
            self.wait_ready(START_TIMEOUT)
            self._wait_namespace(NAMESPACE)
            self._create_kube_proxy_addon()
        except BaseException:
            self.stop()
            raise
        (self.dir / "started.json").write_text(json.dumps({"seconds": round(time.monotonic() - started, 1)}) + "\n")
        return self

    def _etcd_argv(self) -> List[str]:
        p = self.ports
        client, peer = f"http://{LOOPBACK}:{p.etcd_client}", f"http://{LOOPBACK}:{p.etcd_peer}"
        # Plain HTTP, on loopback only: nothing but the API server of this machine talks to it.
        return [str(self._binary("etcd")), "--name", "kubenode-test", "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"kubenode-test={peer}", "--initial-cluster-state", "new",
                "--log-level", "warn"]

    def _apiserver_argv(self) -> List[str]:
        pki = self.pki.path
        return [str(self._binary("kube-apiserver")),
                f"--etcd-servers=http://{LOOPBACK}:{self.ports.etcd_client}",
                f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}", f"--secure-port={self.ports.api}",
                # A loopback advertise address is refused by the default (lease) endpoint reconciler.
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki('apiserver.crt')}", f"--tls-private-key-file={pki('apiserver.key')}",
                f"--client-ca-file={pki('ca.crt')}",
                f"--service-account-key-file={pki('sa.pub')}", f"--service-account-signing-key-file={pki('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # As kubeadm's static pod: kube-proxy's DaemonSet has a privileged container, refused without it.
                "--allow-privileged=true", "--enable-admission-plugins=NodeRestriction",
                "--enable-bootstrap-token-auth=true",
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname"]

    def _spawn(self, name: str, argv: List[str]) -> int:
        with open(self.log(name), "ab") as logfile:
            # A session of its own: `make cluster-up` returns while they keep running, and a Ctrl-C in the
            # terminal reaches only the tests, whose atexit hook stops them in order.
            proc = subprocess.Popen([*(PDEATHSIG if self.owned else ()), *NICE, *argv], stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(self.dir))
        self._pidfile(name).write_text(f"{proc.pid}\n")
        self._procs[name] = proc
        return proc.pid

    def wait_ready(self, seconds: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + seconds
        last = "no answer"
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited during start; its last lines:\n{self.tail(name)}")
            try:
                status, body = self._get_raw("/readyz")
                if status == 200:
                    return
                last = f"HTTP {status}: {body[-300:]}"
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise ClusterError(f"kube-apiserver was not ready within {seconds:.0f} s ({last}); "
                           f"log: {self.log('kube-apiserver')}")

    def _wait_namespace(self, name: str, seconds: float = 20.0) -> None:
        # The API server makes kube-system in a controller of its own, which /readyz does not wait for.
        deadline = time.monotonic() + seconds
        while self.api("GET", f"/api/v1/namespaces/{name}", ok=(200, 404)).get("kind") != "Namespace":
            if time.monotonic() > deadline:
                raise ClusterError(f"the API server did not create namespace {name} within {seconds:.0f} s")
            time.sleep(0.2)

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the forwarders, the API server (first: without etcd it retries instead of exiting), then etcd;
        remove the state directory."""
        for fwd in list(self._forwarders.values()):
            fwd.stop()
        self._forwarders.clear()
        run = self.dir / "run"
        if run.is_dir():
            for pidfile in sorted(run.glob("forward-*.pid")):
                self._stop_pidfile(pidfile, None)
        for name in ("kube-apiserver", "etcd"):
            pidfile = self._pidfile(name)
            if pidfile.exists():
                binary = self._binary(name) if (self.dir / "bin_dir").exists() else None
                self._stop_pidfile(pidfile, binary)
        for proc in self._procs.values():
            proc.poll()   # reaped, so that no zombie of ours is left
        self._procs.clear()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self._ssl = None

    @staticmethod
    def _stop_pidfile(pidfile: Path, binary: Optional[Path]) -> None:
        try:
            fields = pidfile.read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return
        # A forwarder's pid file also names its interpreter (argv[0]), which need not be ours.
        exe = Path(fields[1]) if len(fields) > 1 else binary
        if exe is not None:
            terminate(pid, exe)

    def processes(self) -> Dict[str, int]:
        """The live processes of this cluster by name (etcd, kube-apiserver, forward-NETNS)."""
        out = {}
        for name in ("etcd", "kube-apiserver"):
            pid = self._pid(name) if (self.dir / "bin_dir").exists() else None
            if pid:
                out[name] = pid
        run = self.dir / "run"
        for pidfile in sorted(run.glob("forward-*.pid")) if run.is_dir() else []:
            fields = pidfile.read_text().split()
            if len(fields) > 1 and _pid_alive(int(fields[0]), Path(fields[1])):
                out[pidfile.stem] = int(fields[0])
        return out

    # -- kubeconfigs --
    def _write_admin_conf(self) -> None:
        crt, key = self.pki.client("admin", ADMIN_USER, ADMIN_GROUPS)
        text = kubeconfig_text(self.server, ADMIN_USER, self.pki.path("ca.crt").read_bytes(),
                               crt.read_bytes(), key.read_bytes())
        self.admin_conf.write_text(text)
        os.chmod(self.admin_conf, 0o600)

    def write_kubeconfig(self, path: Path, user: str, server: Optional[str] = None,
                         groups: Iterable[str] = ()) -> Path:
        """A kubeconfig for *user* (a client certificate CN=user, O=groups, made on first use) and *server*."""
        groups = tuple(groups)
        name = "kube-proxy" if (user, groups) == (KUBE_PROXY_USER, ()) else \
            "user-" + "".join(c if c.isalnum() else "_" for c in ":".join((user, *groups)))
        crt, key = self.pki.client(name, user, groups)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(kubeconfig_text(server or self.server, user, self.pki.path("ca.crt").read_bytes(),
                                        crt.read_bytes(), key.read_bytes()))
        os.chmod(path, 0o600)
        return path

    # -- the API --
    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
            ctx.load_cert_chain(str(self.pki.path("admin.crt")), str(self.pki.path("admin.key")))
            self._ssl = ctx
        return self._ssl

    def _request(self, method: str, path: str, data: Optional[bytes], headers: Mapping[str, str],
                 timeout: float) -> Tuple[int, bytes]:
        conn = http.client.HTTPSConnection(LOOPBACK, self.ports.api, context=self._context(), timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=dict(headers))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _get_raw(self, path: str) -> Tuple[int, str]:
        status, data = self._request("GET", path, None, {}, 5.0)
        return status, data.decode(errors="replace")

    def api(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
            ok: Sequence[int] = (200, 201, 202), timeout: float = 30.0) -> Any:
        """One request as kubernetes-admin; returns the decoded JSON (or text); raises ApiError otherwise."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        status, raw = self._request(method, path, data, headers, timeout)
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        if status not in ok:
            raise ApiError(method, path, status, decoded)
        return decoded

    def create_or_replace(self, collection: str, obj: Dict[str, Any]) -> Dict[str, Any]:
        """POST to *collection*; if it exists, PUT over it with its resourceVersion (kubeadm's CreateOrUpdate)."""
        try:
            return self.api("POST", collection, obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
        item = f"{collection}/{obj['metadata']['name']}"
        current = self.api("GET", item)
        replacement = copy.deepcopy(obj)
        replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj.get("kind") == "Service":   # the allocated addresses cannot be given up by a PUT
            replacement["spec"].setdefault("clusterIP", current["spec"].get("clusterIP"))
            replacement["spec"].setdefault("clusterIPs", current["spec"].get("clusterIPs"))
        return self.api("PUT", item, replacement)

    def delete(self, path: str) -> None:
        self.api("DELETE", path, ok=(200, 202, 404))

    def create_node(self, name: str, internal_ip: str, labels: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        """A Node as kubelet would register it (only what kube-proxy reads: name, labels, InternalIP)."""
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                      **(labels or {})}},
                "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                         {"type": "Hostname", "address": name}]}}
        created = self.create_or_replace("/api/v1/nodes", node)
        # Status is a subresource: a create keeps it, an update of the object does not; set it either way.
        created["status"] = node["status"]
        return self.api("PUT", f"/api/v1/nodes/{name}/status", created)

    def create_service(self, name: str, ports: Sequence[Mapping[str, Any]], *, namespace: str = "default",
                       type: str = "ClusterIP", **spec: Any) -> Dict[str, Any]:
        """A Service without a selector (nothing would select pods); *ports* as in spec.ports."""
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
               "spec": {"type": type, "ports": [dict(p) for p in ports], **spec}}
        return self.create_or_replace(f"/api/v1/namespaces/{namespace}/services", svc)

    def create_endpoint_slice(self, service: str, addresses: Sequence[str], ports: Sequence[Mapping[str, Any]], *,
                              namespace: str = "default", name: Optional[str] = None,
                              node_name: Optional[str] = None, ready: bool = True) -> Dict[str, Any]:
        """The EndpointSlice that the controller-manager would make for *service* (none runs here)."""
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                  "metadata": {"name": name or f"{service}-kubenode", "namespace": namespace,
                               "labels": {SERVICE_NAME_LABEL: service,
                                          "endpointslice.kubernetes.io/managed-by": "kubenode.test"}},
                  "endpoints": [{"addresses": [a], "conditions": {"ready": ready, "serving": ready, "terminating": False},
                                 **({"nodeName": node_name} if node_name else {})} for a in addresses],
                  "ports": [dict(p) for p in ports]}
        return self.create_or_replace(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", slice_)

    # -- kube-system as kubeadm leaves it for kube-proxy --
    def _create_kube_proxy_addon(self) -> None:
        docs = kube_proxy_addon(self.ports.api)
        by_kind = {d["kind"]: d for d in docs}
        ns = f"/api/v1/namespaces/{NAMESPACE}"
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        # kubeadm's order (EnsureProxyAddon): ConfigMap, DaemonSet, then ServiceAccount and RBAC.
        for kind, collection in (("ConfigMap", f"{ns}/configmaps"),
                                 ("DaemonSet", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"),
                                 ("ServiceAccount", f"{ns}/serviceaccounts"),
                                 ("ClusterRoleBinding", f"{rbac}/clusterrolebindings"),
                                 ("Role", f"{rbac}/namespaces/{NAMESPACE}/roles"),
                                 ("RoleBinding", f"{rbac}/namespaces/{NAMESPACE}/rolebindings")):
            self.create_or_replace(collection, by_kind[kind])

    def kube_proxy_config_conf(self) -> str:
        """config.conf of the kube-proxy ConfigMap, as it is in the cluster now."""
        cm = self.api("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/kube-proxy")
        return cm["data"]["config.conf"]

    # -- netns labs --
    def expose_in_netns(self, netns: str, address: str = NETNS_ADDRESS) -> str:
        """Serve the API server on address:port inside *netns* (in this process); returns the URL to dial."""
        if netns not in self._forwarders:
            self._forwarders[netns] = Forwarder(netns, (address, self.ports.api), (LOOPBACK, self.ports.api)).start()
        return self.url(address)

    def expose_to_lab(self, switch_netns: str) -> str:
        """The API server at https://198.18.0.254:PORT for every host of a netns lab (its switch namespace)."""
        add_bridge_address(switch_netns)
        return self.expose_in_netns(switch_netns)

    def unexpose(self, netns: str) -> None:
        fwd = self._forwarders.pop(netns, None)
        if fwd:
            fwd.stop()

    def spawn_forwarder(self, switch_netns: str) -> str:
        """As expose_to_lab, but in a process of its own that outlives this one (for `cluster.py expose`)."""
        add_bridge_address(switch_netns)
        pidfile = self.dir / "run" / f"forward-{switch_netns}.pid"
        # The venv's interpreter as it is named (not resolved: resolving leaves the venv).
        python = Path(sys.executable)
        if pidfile.exists():
            fields = pidfile.read_text().split()
            if len(fields) > 1 and _pid_alive(int(fields[0]), Path(fields[1])):
                return self.url(NETNS_ADDRESS)
        with open(self.log(f"forward-{switch_netns}"), "ab") as logfile:
            proc = subprocess.Popen([str(python), str(Path(__file__).resolve()), "--dir", str(self.dir), "_forward",
                                     "--netns", switch_netns], stdin=subprocess.DEVNULL, stdout=logfile,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        pidfile.write_text(f"{proc.pid} {python}\n")
        # It says "listening" once its socket is made, or exits with the reason.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"the forwarder into {switch_netns} exited: {self.tail(f'forward-{switch_netns}')}")
            if b"listening" in self.log(f"forward-{switch_netns}").read_bytes():
                return self.url(NETNS_ADDRESS)
            time.sleep(0.1)
        raise ClusterError(f"the forwarder into {switch_netns} did not start")


def kube_proxy_addon(api_port: int = API_PORT) -> List[Dict[str, Any]]:
    """kubeadm's kube-proxy objects (kubeadm_addon.py's committed --print-manifest output), made ready to create
    as kubeadm creates them: the ConfigMap signed with kubeadm's hash annotation, the endpoint on *api_port*."""
    import yaml  # PyYAML: in the test venv; only `up` needs it

    text = kubeadm_addon.addon_file().read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            data = doc["data"]
            data["kubeconfig.conf"] = data["kubeconfig.conf"].replace(
                f"server: https://{kubeadm_addon.CONTROL_PLANE_ENDPOINT}", f"server: https://{LOOPBACK}:{api_port}")
            # componentconfigs.SignConfigMap: marks config.conf as kubeadm-generated (not user supplied).
            doc["metadata"].setdefault("annotations", {})[kubeadm_addon.CONFIGMAP_HASH_ANNOTATION] = \
                kubeadm_addon.config_map_hash(data)
    return docs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", type=Path, default=STATE_DIR, help="state directory (default %(default)s)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the cluster (or find it running) and print admin.conf's path")
    sub.add_parser("down", help="stop every process of the cluster and remove its state")
    sub.add_parser("status", help="print the live processes; exit 1 if the cluster is not running")
    kc = sub.add_parser("kubeconfig", help="write a kubeconfig for a user and a server address")
    kc.add_argument("--user", default=KUBE_PROXY_USER)
    kc.add_argument("--group", action="append", default=[], help="an O= of the client certificate (repeatable)")
    kc.add_argument("--server", help=f"default https://{LOOPBACK}:PORT; the VM: {VM_ADDRESS}, netns: {NETNS_ADDRESS}")
    kc.add_argument("-o", "--output", type=Path, required=True)
    ex = sub.add_parser("expose", help=f"serve the API on {NETNS_ADDRESS} in a netns lab (a forwarder process)")
    target = ex.add_mutually_exclusive_group(required=True)
    target.add_argument("--inventory", type=Path, help="the inventory of `make hosts-up` (its lab's switch)")
    target.add_argument("--netns", help="a switch namespace with a bridge br0")
    fw = sub.add_parser("_forward", help=argparse.SUPPRESS)
    fw.add_argument("--netns", required=True)
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir)

    if args.cmd == "down":
        cluster.stop()
        return 0
    if args.cmd == "_forward":
        fwd = Forwarder(args.netns, (NETNS_ADDRESS, cluster.ports.api), (LOOPBACK, cluster.ports.api))

        def on_term(_signum: int, _frame: Any) -> None:
            fwd.stop()
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        fwd.start()
        print(f"listening on {NETNS_ADDRESS}:{cluster.ports.api} in {args.netns}", flush=True)
        fwd.serve_forever()
        return 0
    if args.cmd == "status":
        procs = cluster.processes()
        for name, pid in procs.items():
            print(f"{name} {pid}")
        return 0 if cluster.running() else 1
    if args.cmd == "up":
        try:
            if cluster.running(patience=30.0):
                print(f"kube cluster: running (API {cluster.server})", file=sys.stderr)
            else:
                cluster.start()
                seconds = json.loads((cluster.dir / "started.json").read_text())["seconds"]
                print(f"kube cluster: started in {seconds} s (API {cluster.server}; the VM: {cluster.url(VM_ADDRESS)}; "
                      f"netns labs: {cluster.url(NETNS_ADDRESS)} after `cluster.py expose`)", file=sys.stderr)
        except build.BuildError as exc:
            print(f"error: {exc}\n{exc.tail}", file=sys.stderr)
            return 2
        except ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(cluster.admin_conf)
        return 0
    if not cluster.running():
        print("error: the cluster is not running (make cluster-up)", file=sys.stderr)
        return 1
    if args.cmd == "kubeconfig":
        print(cluster.write_kubeconfig(args.output.resolve(), args.user, args.server, args.group))
        return 0
    if args.cmd == "expose":
        if args.inventory:
            from tests.harness.netns_hosts import Lab
            switch = Lab.from_state(args.inventory.resolve()).switch
        else:
            switch = args.netns
        print(cluster.spawn_forwarder(switch))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
