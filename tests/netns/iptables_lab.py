"""Helpers for the iptables netns tests: foreign rules like a real node's, snapshots, traffic."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "iptables"
OWNED_PREFIX = "KUBENODE-"

# what kube-proxy, Calico, Docker and kubelet leave in a node's tables (as in the unit fixtures)
FOREIGN = {
    "mangle": [":KUBE-IPTABLES-HINT - [0:0]", ":KUBE-KUBELET-CANARY - [0:0]"],
    "nat": [
        ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":DOCKER - [0:0]",
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A DOCKER -i docker0 -j RETURN",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-SERVICES -d {svc} -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y",
        "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment \"default/kubernetes:https\" -j KUBE-MARK-MASQ",
    ],
    "filter": [
        ":KUBE-FIREWALL - [0:0]", ":cali-INPUT - [0:0]", ":DOCKER - [0:0]", ":DOCKER-USER - [0:0]",
        "-A INPUT -m comment --comment \"cali:Cz_u1IQiXIMmKD4c\" -j cali-INPUT",
        "-A INPUT -j KUBE-FIREWALL",
        "-A INPUT -p tcp -m tcp --dport 9999 -m comment --comment \"counted foreign rule\" -j ACCEPT",
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -o docker0 -j DOCKER",
        "-A KUBE-FIREWALL -m comment --comment \"kubernetes firewall for dropping marked packets\" -m mark --mark 0x8000/0x8000 -j DROP",
        "-A cali-INPUT -i cali+ -m comment --comment \"cali:FewJpBykm9iJ-YNH\" -j ACCEPT",
        "-A DOCKER-USER -j RETURN",
    ],
}


def tool(backend: str, family: str = "ipv4", suffix: str = "") -> str:
    return f"{'iptables' if family == 'ipv4' else 'ip6tables'}-{backend}{suffix}"


def seed_foreign(host, backend: str, hint: bool = True) -> None:
    """Give a netns host kube-proxy-, Calico- and Docker-like chains and rules in ``backend``."""
    for family, svc in (("ipv4", "10.96.0.1/32"), ("ipv6", "fd00:96::1/128")):
        text = []
        for table, lines in FOREIGN.items():
            if table == "mangle" and not hint:
                continue
            text += [f"*{table}"] + [ln.format(svc=svc) for ln in lines] + ["COMMIT"]
        host.run([tool(backend, family, "-restore"), "-w", "5", "--noflush"], input="\n".join(text) + "\n")


def save(host, backend: str, family: str = "ipv4", counters: bool = False) -> str:
    argv = [tool(backend, family, "-save")] + (["-c"] if counters else [])
    out = host.run(argv).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#")) + "\n"


def foreign_part(text: str, owned_prefix: str = OWNED_PREFIX) -> str:
    """Everything but the owned chains and the jumps into them."""
    keep = []
    for line in text.splitlines():
        body = line.split("] ", 1)[1] if line.startswith("[") else line
        if body.startswith(f":{owned_prefix}") or body.startswith(f"-A {owned_prefix}"):
            continue
        words = body.split()
        if body.startswith("-A ") and len(words) >= 2 and words[-2] in ("-j", "-g") and words[-1].startswith(owned_prefix):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


def strip_counters(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("["):
            line = line.split("] ", 1)[1]
        elif line.startswith(":") and line.endswith("]"):
            line = line.rsplit(" [", 1)[0]
        out.append(line)
    return "\n".join(out) + "\n"


def chain_lines(text: str, chain: str) -> list[str]:
    return [ln for ln in text.splitlines() if (ln.split("] ", 1)[1] if ln.startswith("[") else ln).startswith(f"-A {chain} ")]


LISTENER = r"""
import socket, sys, threading, time
ports = [int(p) for p in sys.argv[1:]]
socks = []
for port in ports:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)
    socks.append(s)
def serve(s):
    while True:
        c, _a = s.accept()
        c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
time.sleep(600)
"""

PROBE = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1])
out = {}
def probe(addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((addr, port))
        out[f"{addr} {port}"] = "open"
    except socket.timeout:
        out[f"{addr} {port}"] = "dropped"
    except ConnectionRefusedError:
        out[f"{addr} {port}"] = "refused"
    except OSError as exc:
        out[f"{addr} {port}"] = f"error {exc.errno}"
    finally:
        s.close()
threads = [threading.Thread(target=probe, args=(a, p)) for a, p in targets]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


class Listener:
    """TCP listeners (IPv4 and IPv6) inside a netns host."""

    def __init__(self, host, ports: list[int]) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", host.netns, "python3", "-c", LISTENER] + [str(p) for p in ports],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def probe(client, targets: list[tuple[str, int]]) -> dict[str, str]:
    """Connect from ``client`` to each (address, port): open, refused (reached, nothing listens) or dropped."""
    out = client.run(["python3", "-c", PROBE, json.dumps(targets)]).stdout
    return json.loads(out)


def wait_for(predicate, timeout: float, step: float = 0.25) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
