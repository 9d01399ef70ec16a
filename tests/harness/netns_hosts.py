"""netns test hosts: network namespaces on this machine's kernel, joined by veth pairs.

Topology: one "switch" namespace holding a bridge, and N host namespaces, each with an eth0
veth whose peer is a port of the bridge. Addresses come from TEST-NET ranges that exist only
inside the namespaces (198.18.0.0/24 and 2001:db8:18::/64); nothing is added to the host's own
namespace, and nothing routes out of the lab.

    python3 tests/harness/netns_hosts.py up --count 3 --inventory build/inventory-netns.yml
    python3 tests/harness/netns_hosts.py down --inventory build/inventory-netns.yml

From pytest: ``with Lab.create(3) as lab: ...`` (the fixtures in tests/conftest.py use it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

V4_NET = "198.18.0"
V6_NET = "2001:db8:18::"
STATE_SUFFIX = ".state.json"


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def in_ns(netns: str, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns] + argv, check=check, capture_output=True, text=True, **kw)


@dataclass
class Host:
    name: str  # inventory name (h1, h2, ...)
    netns: str  # namespace name, unique per lab
    v4: str
    v6: str

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return in_ns(self.netns, argv, check=check, **kw)


@dataclass
class Lab:
    prefix: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @classmethod
    def create(cls, count: int, prefix: str | None = None) -> "Lab":
        lab = cls(prefix or f"kn{secrets.token_hex(3)}")
        try:
            lab._build(count)
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build(self, count: int) -> None:
        ip("netns", "add", self.switch)
        ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        ip("link", "set", "br0", "up", netns=self.switch)
        ip("link", "set", "lo", "up", netns=self.switch)
        for i in range(1, count + 1):
            host = Host(f"h{i}", f"{self.prefix}-h{i}", f"{V4_NET}.{i}", f"{V6_NET}{i:x}")
            ip("netns", "add", host.netns)
            self.hosts.append(host)
            port = f"p{i}"
            # create the pair inside the switch namespace, then move one end: never in the host's namespace
            ip("link", "add", port, "type", "veth", "peer", "name", "eth0", netns=self.switch)
            ip("link", "set", "eth0", "netns", host.netns, netns=self.switch)
            ip("link", "set", port, "master", "br0", "up", netns=self.switch)
            ip("link", "set", "lo", "up", netns=host.netns)
            ip("addr", "add", f"{host.v4}/24", "dev", "eth0", netns=host.netns)
            ip("addr", "add", f"{host.v6}/64", "dev", "eth0", "nodad", netns=host.netns)
            ip("link", "set", "eth0", "up", netns=host.netns)

    def destroy(self) -> None:
        for name in [h.netns for h in self.hosts] + [self.switch]:
            ip("netns", "del", name, check=False)
        # namespaces of a lab that died half-built
        listed = ip("netns", "list", check=False).stdout.split("\n")
        for line in listed:
            name = line.split(" ")[0]
            if name.startswith(self.prefix + "-"):
                ip("netns", "del", name, check=False)
        self.hosts = []

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def inventory(self, python: str = sys.executable) -> dict:
        hosts = {
            h.name: {"ansible_netns_name": h.netns, "kn_address": h.v4, "kn_address6": h.v6}
            for h in self.hosts
        }
        return {
            "all": {
                "vars": {
                    "ansible_connection": "kubenode.dataplane.netns",
                    "ansible_python_interpreter": python,
                },
                "hosts": hosts,
            }
        }

    def write_inventory(self, path: Path, python: str = sys.executable) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML: ansible's yaml inventory plugin reads this file as it is
        path.write_text(json.dumps(self.inventory(python), indent=2) + "\n")
        Path(str(path) + STATE_SUFFIX).write_text(
            json.dumps({"prefix": self.prefix, "hosts": [h.__dict__ for h in self.hosts]})
        )
        return path

    @classmethod
    def from_state(cls, inventory: Path) -> "Lab":
        state = json.loads(Path(str(inventory) + STATE_SUFFIX).read_text())
        return cls(state["prefix"], [Host(**h) for h in state["hosts"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create N hosts and write an inventory")
    up.add_argument("--count", type=int, default=3)
    up.add_argument("--inventory", type=Path, required=True)
    up.add_argument("--python", default=sys.executable, help="interpreter Ansible uses inside the namespaces")
    down = sub.add_parser("down", help="remove the hosts of an inventory written by 'up'")
    down.add_argument("--inventory", type=Path, required=True)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("netns hosts need root", file=sys.stderr)
        return 1
    if args.cmd == "up":
        if Path(str(args.inventory) + STATE_SUFFIX).exists():
            Lab.from_state(args.inventory).destroy()
        lab = Lab.create(args.count)
        lab.write_inventory(args.inventory.resolve(), args.python)
        for h in lab.hosts:
            print(f"{h.name}: netns {h.netns} {h.v4} {h.v6}", file=sys.stderr)
        print(args.inventory.resolve())
        return 0
    state = Path(str(args.inventory) + STATE_SUFFIX)
    if state.exists():
        Lab.from_state(args.inventory).destroy()
        state.unlink()
    args.inventory.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
