# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube-proxy on one node: what the node offers each mode, which mode runs, what an old mode left.

Facts and preflight (kube_proxy_node_info): kernel and nft versions (nftables mode needs a
kernel >= 5.13 and nft >= 1.0.1), IPVS in the kernel and the ipset/conntrack tools (ipvs mode),
the iptables backends in use (one only: kube-proxy and the CNI must share it), Calico's
footprint, and the mode kube-proxy reports at /proxyMode.

Leftovers (kube_proxy_leftovers): kube-proxy removes nftables rules when it starts in iptables
or ipvs mode and iptables/ipvs rules when it starts in nftables mode, but nothing between
iptables and ipvs, which share chain names (kubernetes#102314; cmd/kube-proxy/app
server_linux.go platformCleanup). What the real kube-proxy v1.37 leaves, seen on the VM:
after iptables -> ipvs, iptables mode's per-service chains (KUBE-SVC-*, KUBE-SEP-*, ...), its
fixed chains that ipvs mode does not use (filter KUBE-SERVICES with its REJECT rules for
Services without endpoints, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-PROXY-CANARY) and its
jumps from the built-in chains, also into chains both modes use (told apart by their comments);
after ipvs -> iptables, ipvs mode's chains (KUBE-IPVS-FILTER, KUBE-NODE-PORT, ...) and jumps,
its IPVS virtual services, kube-ipvs0 with every Service IP bound, and its KUBE-* ipsets. This
backend removes exactly those (an ipset only when no rule that stays names it), and never a
rule of the mode that runs, nor anything outside kube-proxy's names.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import typing as t
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

NFTABLES_MIN_KERNEL = (5, 13)
NFTABLES_MIN_NFT = (1, 0, 1)
IPVS_DEPRECATION = (
    "kube-proxy's ipvs mode is deprecated since Kubernetes 1.35 (KEP-5495); nftables mode (GA since 1.33) is the "
    "recommended replacement"
)
# per-service chains of iptables mode; ipvs mode never creates these names
IPTABLES_MODE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-", "KUBE-XLB-")
# The fixed chains each iptables-based mode creates, by table, and the comments of its jumps into them from the
# built-in chains (kube-proxy v1.37: pkg/proxy/iptables/proxier.go iptablesJumpChains and its canary,
# pkg/proxy/ipvs/proxier.go iptablesChains and iptablesJumpChain). KUBE-FIREWALL is not here: kube-proxy makes it
# as a duplicate of kubelet's and never removes it, and neither do we.
MODE_CHAINS: t.Dict[str, t.Dict[str, t.FrozenSet[str]]] = {
    "iptables": {
        "filter": frozenset({"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-FORWARD",
                             "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY"}),
        "nat": frozenset({"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY"}),
        "mangle": frozenset({"KUBE-PROXY-CANARY"}),
    },
    "ipvs": {
        "filter": frozenset({"KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
                             "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"}),
        "nat": frozenset({"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"}),
    },
}
MODE_JUMPS: t.Dict[str, t.FrozenSet[t.Tuple[str, str, str]]] = {  # (table, target, comment)
    "iptables": frozenset({
        ("filter", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals"),
        ("filter", "KUBE-NODEPORTS", "kubernetes health check service ports"),
        ("filter", "KUBE-SERVICES", "kubernetes service portals"),
        ("filter", "KUBE-FORWARD", "kubernetes forwarding rules"),
        ("filter", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall"),
        ("nat", "KUBE-SERVICES", "kubernetes service portals"),
        ("nat", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    }),
    "ipvs": frozenset({
        ("nat", "KUBE-SERVICES", "kubernetes service portals"),
        ("nat", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
        ("filter", "KUBE-FORWARD", "kubernetes forwarding rules"),
        ("filter", "KUBE-NODE-PORT", "kubernetes health check rules"),
        ("filter", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
        ("filter", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
        ("filter", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
    }),
}
# ipvs mode's ipsets (pkg/proxy/ipvs/ipset.go); IPv6 ones are KUBE-6-..., cut to ipset's 31 characters
IPVS_IPSETS_V4 = ("KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER",
                  "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER-SOURCE-IP",
                  "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP",
                  "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-SCTP-HASH",
                  "KUBE-NODE-PORT-LOCAL-SCTP-HASH", "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS")
IPVS_IPSETS = frozenset(IPVS_IPSETS_V4) | frozenset(("KUBE-6-" + n[len("KUBE-"):])[:31] for n in IPVS_IPSETS_V4)


def stale_chains(live_mode: str, table: str) -> t.FrozenSet[str]:
    """The fixed chains of the other iptables-based mode(s) in *table* that the live mode does not use."""
    live = MODE_CHAINS.get(live_mode, {}).get(table, frozenset())
    other: t.Set[str] = set()
    for mode, tables in MODE_CHAINS.items():
        if mode != live_mode:
            other |= tables.get(table, frozenset())
    return frozenset(other - live)


def comment_of(spec: str) -> t.Optional[str]:
    words = shlex.split(spec)
    return words[words.index("--comment") + 1] if "--comment" in words[:-1] else None


KUBE_IPVS0 = "kube-ipvs0"
DEFAULT_NODE_PORT_RANGE = "30000-32767"


def version_tuple(text: str) -> t.Tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def show_version(numbers: t.Sequence[int]) -> str:
    return ".".join(str(n) for n in numbers)


def parse_kernel_release(release: str) -> t.Optional[t.Tuple[int, int, int]]:
    """`uname -r` -> (major, minor, patch): '6.1.0-18-amd64', '5.14.0-427.13.1.el9_4.x86_64', '6.8.0'."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", release.strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def parse_nft_version(output: str) -> t.Optional[t.Tuple[int, ...]]:
    """`nft --version` -> (1, 0, 6) from 'nftables v1.0.6 (Lester Gooch #5)'."""
    match = re.search(r"\bv(\d+(?:\.\d+)+)", output)
    return version_tuple(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# iptables-save


@dataclass
class Rule:
    chain: str
    spec: str  # everything after "-A CHAIN "
    target: t.Optional[str]


@dataclass
class Table:
    name: str
    chains: t.List[str] = field(default_factory=list)
    rules: t.List[Rule] = field(default_factory=list)


def parse_save(text: str) -> t.Dict[str, Table]:
    """iptables-save output -> tables with their chains (in order) and rules."""
    tables: t.Dict[str, Table] = {}
    current: t.Optional[Table] = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), Table(line[1:].strip()))
        elif current is None or line.startswith("#") or not line.strip() or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            chain, _sep, spec = line[3:].partition(" ")
            words = shlex.split(spec)
            target = None
            for flag in ("-j", "-g", "--jump", "--goto"):
                if flag in words and words.index(flag) + 1 < len(words):
                    target = words[words.index(flag) + 1]
            current.rules.append(Rule(chain, spec, target))
    return tables


def count_rules(tables: t.Mapping[str, Table]) -> int:
    return sum(len(tb.rules) for tb in tables.values())


def chains_with(tables: t.Mapping[str, Table], prefix: str) -> int:
    return sum(1 for tb in tables.values() for c in tb.chains if c.startswith(prefix))


# ---------------------------------------------------------------------------------------------
# /proc/net/ip_vs and kube-ipvs0


@dataclass(frozen=True)
class VirtualService:
    protocol: str  # TCP, UDP, SCTP
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol} {host}:{self.port}"

    def ipvsadm_argv(self) -> t.List[str]:
        flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}[self.protocol]
        host = f"[{self.address}]" if ":" in self.address else self.address
        return [flag, f"{host}:{self.port}"]


def _hex_address(text: str) -> str:
    if text.startswith("["):
        return str(ipaddress.ip_address(text.strip("[]")))
    return str(ipaddress.ip_address(int(text, 16)))


def parse_proc_ip_vs(text: str) -> t.List[VirtualService]:
    """/proc/net/ip_vs -> the virtual services keyed by protocol, address and port (FWM services skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith(("TCP ", "UDP ", "SCTP ")):
            proto, endpoint = line.split()[:2]
            address, _sep, port = endpoint.rpartition(":")
            found.append(VirtualService(proto, _hex_address(address), int(port, 16)))
    return found


def parse_ip_addr_json(text: str) -> t.Dict[str, t.List[str]]:
    """`ip -j addr show` -> interface name -> its addresses."""
    out: t.Dict[str, t.List[str]] = {}
    for link in json.loads(text or "[]"):
        out[link.get("ifname", "")] = [a["local"] for a in link.get("addr_info", []) if "local" in a]
    return out


# ---------------------------------------------------------------------------------------------
# facts, preflight, /proxyMode


def fetch_proxy_mode(url: str, timeout: float = 3.0) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    """(mode, None) or (None, why): what kube-proxy answers at /proxyMode, without any HTTP proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.read().decode().strip(), None
    except urllib.error.HTTPError as exc:
        return None, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return None, f"{url} cannot be reached: {getattr(exc, 'reason', exc)}"


class NodeFacts:
    """Reads what the node offers kube-proxy. Every program runs through the collection's Runner."""

    def __init__(self, runner: Runner, read_file: t.Callable[[str], t.Optional[str]] = None) -> None:
        self.runner = runner
        self.read_file = read_file or _read_file

    def kernel_release(self) -> str:
        return os.uname().release

    def nft_version(self) -> t.Tuple[t.Optional[str], t.Optional[str]]:
        nft = self.runner.which("nft", required=False)
        if not nft:
            return None, None
        out = self.runner.run([nft, "--version"], what="reading the nft version").out
        parsed = parse_nft_version(out)
        return (show_version(parsed) if parsed else None), out.strip()

    def tools(self) -> t.Dict[str, t.Optional[str]]:
        names = ("ipset", "conntrack", "ipvsadm", "nft", "iptables", "iptables-legacy-save", "iptables-nft-save")
        return {name: self.runner.which(name, required=False) for name in names}

    def ipvs(self, release: str) -> dict:
        loaded = self.read_file("/proc/net/ip_vs") is not None
        builtin = self.read_file(f"/lib/modules/{release}/modules.builtin") or ""
        deps = self.read_file(f"/lib/modules/{release}/modules.dep") or ""
        in_kernel = bool(re.search(r"(^|/)ip_vs\.ko(\.[a-z]+)?$", builtin, re.M))
        as_module = bool(re.search(r"(^|/)ip_vs\.ko(\.[a-z]+)?:", deps, re.M))
        return {"loaded": loaded, "builtin": in_kernel, "module": as_module, "available": loaded or in_kernel or as_module}

    def iptables(self) -> dict:
        out: dict = {}
        for backend in ("legacy", "nft"):
            save = self.runner.which(f"iptables-{backend}-save", required=False)
            if not save:
                out[backend] = None
                continue
            if backend == "legacy" and not legacy_tables_exist(self.read_file):
                # the kernel lists every legacy table it holds: none means no legacy rule, no need to run the tool
                text = ""
            else:
                text = self.runner.run([save], what=f"reading the iptables {backend} rules").out
            tables = parse_save(text)
            out[backend] = {"rules": count_rules(tables), "kube_chains": chains_with(tables, "KUBE-"),
                            "calico_chains": chains_with(tables, "cali-"), "tables": sorted(tables)}
        out["selected"] = self.selected_backend()
        out["in_use"] = [b for b in ("legacy", "nft") if out.get(b) and out[b]["rules"]]
        return out

    def selected_backend(self) -> t.Optional[str]:
        """The backend the `iptables` command runs, from where its alternatives link ends, else its --version."""
        iptables = self.runner.which("iptables", required=False)
        if not iptables:
            return None
        target = os.path.basename(os.path.realpath(iptables))
        if "nft" in target:
            return "nft"
        if "legacy" in target:
            return "legacy"
        version = self.runner.run([iptables, "--version"], what="reading the iptables version").out
        return "nft" if "nf_tables" in version else "legacy" if "legacy" in version else None

    def interfaces(self) -> t.List[str]:
        try:
            return sorted(os.listdir("/sys/class/net"))
        except OSError:
            return []


def legacy_tables_exist(read_file: t.Callable[[str], t.Optional[str]], family: str = "ipv4") -> bool:
    """Whether the kernel holds any legacy (x_tables) table for the family: /proc/net/ip_tables_names lists them."""
    names = read_file("/proc/net/ip_tables_names" if family == "ipv4" else "/proc/net/ip6_tables_names")
    return bool(names and names.strip())


def _read_file(path: str) -> t.Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def calico_report(iptables: dict, interfaces: t.Sequence[str]) -> dict:
    """Calico's footprint on the node: its chains per iptables backend and its interfaces."""
    backends = [b for b in ("legacy", "nft") if iptables.get(b) and iptables[b]["calico_chains"]]
    kube = [b for b in ("legacy", "nft") if iptables.get(b) and iptables[b]["kube_chains"]]
    ifaces = [i for i in interfaces if i.startswith("cali") or i in ("tunl0", "vxlan.calico", "vxlan-v6.calico", "wireguard.cali")]
    present = bool(backends or ifaces)
    report = {"present": present, "iptables_backends": backends, "kube_proxy_backends": kube, "interfaces": ifaces}
    if present and backends and kube and set(backends) != set(kube):
        report["mismatch"] = (f"Calico's chains are in the {'/'.join(backends)} backend but kube-proxy's are in "
                              f"{'/'.join(kube)}: set FELIX_IPTABLESBACKEND to match (or Auto) so both use one backend")
    return report


def preflight(mode: str, facts: dict, min_kernel: t.Tuple[int, ...] = NFTABLES_MIN_KERNEL,
              min_nft: t.Tuple[int, ...] = NFTABLES_MIN_NFT) -> dict:
    """What stops ``mode`` from working on this node (problems) and what the operator should know."""
    problems: t.List[str] = []
    warnings: t.List[str] = []
    tools = facts["tools"]
    # whether the rules live in one iptables backend only is kubenode.dataplane.iptables_backend's verdict
    # (the kube_proxy role runs it next to this); ``iptables.in_use`` reports the counts seen here
    if mode in ("iptables", "ipvs") and not tools.get("iptables"):
        problems.append("the iptables program is not installed")
    if mode == "ipvs":
        if not facts["ipvs"]["available"]:
            problems.append(f"the kernel {facts['kernel_release']} has no IP_VS (neither built in nor as a module)")
        for tool in ("ipset", "conntrack"):
            if not tools.get(tool):
                problems.append(f"the {tool} program is not installed (ipvs mode needs it)")
        warnings.append(IPVS_DEPRECATION)
    if mode == "nftables":
        kernel = parse_kernel_release(facts["kernel_release"])
        if kernel is None:
            problems.append(f"the kernel release {facts['kernel_release']!r} cannot be read as a version")
        elif kernel < tuple(min_kernel):
            problems.append(f"the kernel {facts['kernel_release']} is older than {show_version(min_kernel)}, "
                            "which kube-proxy's nftables mode needs")
        if not facts.get("nft_version"):
            problems.append("the nft program is not installed (nftables mode needs nft >= "
                            f"{show_version(min_nft)})" if not tools.get("nft") else
                            "the nft version cannot be read")
        elif version_tuple(facts["nft_version"]) < tuple(min_nft):
            problems.append(f"nft {facts['nft_version']} is older than {show_version(min_nft)}, which kube-proxy's "
                            "nftables mode needs")
    return {"mode": mode, "ok": not problems, "problems": problems, "warnings": warnings}


# ---------------------------------------------------------------------------------------------
# leftovers of a previous mode


class LeftoverError(DataplaneError):
    pass


@dataclass
class Leftovers:
    # (family, backend, table) -> chains to delete, rules (chain, spec) to delete first
    chains: t.Dict[t.Tuple[str, str, str], t.List[str]] = field(default_factory=dict)
    jumps: t.Dict[t.Tuple[str, str, str], t.List[t.Tuple[str, str]]] = field(default_factory=dict)
    kept: t.List[str] = field(default_factory=list)  # stale chains still referenced from outside kube-proxy
    services: t.List[VirtualService] = field(default_factory=list)
    link: t.Optional[t.List[str]] = None  # kube-ipvs0's addresses when it exists
    ipsets: t.List[str] = field(default_factory=list)  # ipvs mode's ipsets, to destroy
    sets_in_use: t.Set[str] = field(default_factory=set)  # ipsets named by rules that stay

    def lines(self) -> t.List[str]:
        out = []
        for (family, backend, table), chains in sorted(self.chains.items()):
            for chain, spec in self.jumps.get((family, backend, table), []):
                out.append(f"{family} {backend} {table}: rule -A {chain} {spec}")
            for chain in chains:
                out.append(f"{family} {backend} {table}: chain {chain}")
        out.extend(f"ipvs: service {s}" for s in self.services)
        if self.link is not None:
            out.append(f"link: {KUBE_IPVS0} ({', '.join(self.link) or 'no addresses'})")
        out.extend(f"ipset: {name}" for name in self.ipsets)
        return out

    def empty(self) -> bool:
        return not self.lines()


_FAMILIES = {"ipv4": "iptables", "ipv6": "ip6tables"}


class LeftoversBackend(Backend):
    """The converge loop over kube-proxy's leftovers: current = what is there, desired = none of it."""

    def __init__(self, runner: Runner, live_mode: str, node_port_range: str = DEFAULT_NODE_PORT_RANGE,
                 exclude_cidrs: t.Sequence[str] = (), read_file: t.Callable[[str], t.Optional[str]] = None) -> None:
        if live_mode not in ("iptables", "ipvs", "nftables"):
            raise LeftoverError(f"mode must be iptables, ipvs or nftables, not {live_mode!r}; nothing was changed")
        self.runner = runner
        self.live_mode = live_mode
        try:
            self.exclude = [ipaddress.ip_network(c, strict=False) for c in exclude_cidrs]
        except ValueError as exc:
            raise LeftoverError(f"exclude_cidrs: {exc}; nothing was changed") from None
        self.node_ports: t.Optional[t.Tuple[int, int]] = None
        if node_port_range:
            match = re.match(r"^(\d+)(?:-(\d+))?$", node_port_range.strip())
            if not match:
                raise LeftoverError(f"node_port_range {node_port_range!r} is not a port range such as 30000-32767; "
                                    "nothing was changed")
            self.node_ports = (int(match.group(1)), int(match.group(2) or match.group(1)))
        self.read_file = read_file or _read_file
        self._before = Leftovers()

    # ---- reading ----

    def _tool(self, family: str, backend: str, verb: str) -> t.Optional[str]:
        return self.runner.which(f"{_FAMILIES[family]}-{backend}-{verb}", required=False)

    def _iptables(self, found: Leftovers) -> None:
        for family in _FAMILIES:
            for backend in ("legacy", "nft"):
                save = self._tool(family, backend, "save")
                if not save or (backend == "legacy" and not legacy_tables_exist(self.read_file, family)):
                    continue
                tables = parse_save(self.runner.run([save], what=f"reading the {family} {backend} rules").out)
                for table in tables.values():
                    self._stale_in(found, (family, backend, table.name), table)

    def _stale_in(self, found: Leftovers, key: t.Tuple[str, str, str], table: Table) -> None:
        fixed = stale_chains(self.live_mode, table.name)
        per_service = self.live_mode != "iptables"
        stale = {c for c in table.chains if (per_service and c.startswith(IPTABLES_MODE_CHAIN_PREFIXES)) or c in fixed}
        # the other mode's jumps from the built-in chains into a chain both modes use (its own differ in comment)
        live_jumps = MODE_JUMPS.get(self.live_mode, frozenset())
        other_jumps = {j for mode, jumps in MODE_JUMPS.items() if mode != self.live_mode for j in jumps} - live_jumps
        every_jump = {j for jumps in MODE_JUMPS.values() for j in jumps}
        # a stale chain that something outside kube-proxy jumps to stays, with all it leads to (kube-proxy's own
        # jumps from the built-in chains, known by their comments, are not outside)
        kept = {r.target for r in table.rules if r.target in stale and r.chain not in stale and not r.chain.startswith("KUBE-")
                and (table.name, r.target, comment_of(r.spec)) not in every_jump}
        grew = True
        while grew:
            more = {r.target for r in table.rules if r.chain in kept and r.target in stale} - kept
            kept |= more
            grew = bool(more)
        stale -= kept
        found.kept.extend(f"{key[0]} {key[1]} {key[2]}: {c}" for c in sorted(kept))
        jumps = [(r.chain, r.spec) for r in table.rules if r.chain not in stale and (
            r.target in stale or (r.target and not r.chain.startswith("KUBE-")
                                  and (table.name, r.target, comment_of(r.spec)) in other_jumps))]
        # the ipsets that rules staying in place name: such a set stays too
        going = set(jumps)
        for r in table.rules:
            if r.chain not in stale and (r.chain, r.spec) not in going and "--match-set" in r.spec:
                words = shlex.split(r.spec)
                found.sets_in_use.update(words[i + 1] for i, w in enumerate(words[:-1]) if w == "--match-set")
        if stale or jumps:
            found.chains[key] = [c for c in table.chains if c in stale]
            found.jumps[key] = jumps

    def _ipvs(self, found: Leftovers) -> None:
        ip = self.runner.which("ip")
        addrs = parse_ip_addr_json(self.runner.run([ip, "-j", "addr", "show"], what="listing addresses").out)
        if KUBE_IPVS0 in addrs:
            details = json.loads(self.runner.run([ip, "-j", "-d", "link", "show", "dev", KUBE_IPVS0],
                                                 what=f"reading {KUBE_IPVS0}").out or "[]")
            kind = (details[0].get("linkinfo") or {}).get("info_kind") if details else None
            if kind != "dummy":
                raise LeftoverError(f"{KUBE_IPVS0} is a {kind or 'plain'} interface, not the dummy interface kube-proxy "
                                    "creates; it was left alone and nothing was changed")
            found.link = sorted(addrs[KUBE_IPVS0])
        on_kube_ipvs0 = set(addrs.get(KUBE_IPVS0, []))
        local = {a for values in addrs.values() for a in values}
        proc = self.read_file("/proc/net/ip_vs")
        for service in parse_proc_ip_vs(proc or ""):
            address = ipaddress.ip_address(service.address)
            if any(address in net for net in self.exclude):
                continue
            cluster_ip = service.address in on_kube_ipvs0
            node_port = (self.node_ports is not None and self.node_ports[0] <= service.port <= self.node_ports[1]
                         and service.address in local)
            if cluster_ip or node_port:
                found.services.append(service)

    def _ipsets(self, found: Leftovers) -> None:
        ipset = self.runner.which("ipset", required=False)
        if not ipset:
            return
        names = self.runner.run([ipset, "list", "-n"], what="listing the ipsets").out.split()
        for name in sorted(n for n in names if n in IPVS_IPSETS):
            if name in found.sets_in_use:
                found.kept.append(f"ipset: {name} (a rule that stays names it)")
            else:
                found.ipsets.append(name)

    def current(self) -> Leftovers:
        found = Leftovers()
        # every mode reads the rules: ipvs mode's ipsets stay while a rule names them
        self._iptables(found)
        if self.live_mode != "ipvs":
            self._ipvs(found)
            self._ipsets(found)
        return found

    def desired(self, before: Leftovers) -> Leftovers:
        self._before = before
        return Leftovers(kept=list(before.kept))

    def equal(self, actual: Leftovers, wanted: Leftovers) -> bool:
        return actual.lines() == wanted.lines()

    # ---- writing ----

    @staticmethod
    def restore_script(table: str, chains: t.Sequence[str], jumps: t.Sequence[t.Tuple[str, str]]) -> str:
        lines = [f"*{table}"]
        lines += [f"-D {chain} {spec}" for chain, spec in jumps]
        lines += [f"-F {chain}" for chain in chains]
        lines += [f"-X {chain}" for chain in chains]
        return "\n".join(lines + ["COMMIT", ""])

    def _restore(self, before: Leftovers, test: bool) -> None:
        for (family, backend, table), chains in sorted(before.chains.items()):
            restore = self._tool(family, backend, "restore")
            if not restore:
                raise LeftoverError(f"{_FAMILIES[family]}-{backend}-restore is missing, so the stale chains cannot be "
                                    "removed; nothing was changed")
            argv = [restore, "--noflush"] + (["--test"] if test else [])
            self.runner.run(argv, data=self.restore_script(table, chains, before.jumps.get((family, backend, table), [])),
                            what=f"{'checking' if test else 'removing'} stale kube-proxy chains in {family} {backend} {table}")

    def validate(self, after: Leftovers) -> None:
        # the dry run of what apply will do to ``before`` (check mode runs it too)
        before = self._before
        self._restore(before, test=True)
        if before.services and not self.runner.which("ipvsadm", required=False):
            raise LeftoverError("ipvsadm is not installed, so kube-proxy's IPVS services cannot be removed; nothing was changed")

    def apply(self, before: Leftovers, after: Leftovers) -> None:
        self._restore(before, test=False)
        for service in before.services:
            self.runner.run([self.runner.which("ipvsadm"), "-D"] + service.ipvsadm_argv(),
                            what=f"removing kube-proxy's IPVS service {service}")
        if before.link is not None:
            self.runner.run([self.runner.which("ip"), "link", "del", KUBE_IPVS0], what=f"removing {KUBE_IPVS0}")
        for name in before.ipsets:
            self.runner.run([self.runner.which("ipset"), "destroy", name], what=f"removing kube-proxy's ipset {name}")
        return None

    def render(self, state: Leftovers) -> str:
        return "\n".join(state.lines()) + ("\n" if state.lines() else "")

    def result(self, before: Leftovers, after: Leftovers, changed: bool) -> dict:
        return {"removed": before.lines() if changed else [], "kept": before.kept, "live_mode": self.live_mode}


def gather(facts: NodeFacts, *, mode: t.Optional[str], proxy_mode_url: t.Optional[str],
           kernel_release: t.Optional[str] = None, nft_version: t.Optional[str] = None) -> dict:
    """Everything kube_proxy_node_info returns. ``kernel_release``/``nft_version`` replace what the node reports."""
    release = kernel_release or facts.kernel_release()
    parsed_kernel = parse_kernel_release(release)
    if nft_version:
        nft, nft_output = nft_version, None
    elif mode in (None, "nftables"):
        nft, nft_output = facts.nft_version()
    else:
        # not needed to judge iptables or ipvs mode: one program less to start
        nft, nft_output = None, None
    interfaces = facts.interfaces()
    iptables = facts.iptables()
    out: dict = {
        "kernel_release": release,
        "kernel_version": show_version(parsed_kernel) if parsed_kernel else None,
        "nft_version": nft,
        "nft_version_output": nft_output,
        "tools": facts.tools(),
        "ipvs": facts.ipvs(facts.kernel_release()),
        "kube_ipvs0": KUBE_IPVS0 in interfaces,
        "iptables": iptables,
        "calico": calico_report(iptables, interfaces),
        "reported_by": {"kernel_release": "given" if kernel_release else "node",
                        "nft_version": "given" if nft_version else "node"},
    }
    if proxy_mode_url:
        live, error = fetch_proxy_mode(proxy_mode_url)
        out["proxy_mode"] = {"url": proxy_mode_url, "mode": live, "error": error}
    if mode:
        out["preflight"] = preflight(mode, out)
    return out
