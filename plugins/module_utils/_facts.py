# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of dataplane_info: what is really active in a node's dataplane. Read only.

Everything is read from the kernel's own files (/proc, /sys, the kernel config) or from the
read-only listing commands of the tools (iptables-*-save, nft list tables, ip addr), through the
collection's Runner. A missing tool or file makes that part "unavailable", never a failure.
The parsers are pure functions over the tools' text so that unit tests feed them captured
output; ``gather`` puts them together.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import re
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._fwmodel import NFT_TABLE as OWN_NFT_TABLE
from ansible_collections.kubenode.dataplane.plugins.module_utils._modfiles import parse_modules_load
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner
from ansible_collections.kubenode.dataplane.plugins.module_utils._sysctl import PROC_SYS, key_path, normalise_value

try:
    import yaml

    HAS_YAML = True
except ImportError:  # the fallback reader covers what is needed of a KubeProxyConfiguration
    HAS_YAML = False

PROXY_MODES = ("iptables", "ipvs", "nftables", "kernelspace")
DEFAULT_METRICS_ADDRESS = "127.0.0.1:10249"

# kernel config symbols worth reporting, by the name used in the result
KERNEL_FEATURES = {
    "ip_vs": "CONFIG_IP_VS",
    "nf_tables": "CONFIG_NF_TABLES",
    "nft_compat": "CONFIG_NFT_COMPAT",
    "ip_tables": "CONFIG_IP_NF_IPTABLES",
    "iptables_legacy": "CONFIG_IP_NF_IPTABLES_LEGACY",
    "bridge_netfilter": "CONFIG_BRIDGE_NETFILTER",
    "ip_set": "CONFIG_IP_SET",
    "nf_conntrack": "CONFIG_NF_CONNTRACK",
    "dummy": "CONFIG_DUMMY",
    "vxlan": "CONFIG_VXLAN",
    "ipip": "CONFIG_NET_IPIP",
}

# module name -> kernel config symbol that builds it
MODULES = {
    "ip_vs": "CONFIG_IP_VS",
    "ip_vs_rr": "CONFIG_IP_VS_RR",
    "ip_vs_wrr": "CONFIG_IP_VS_WRR",
    "ip_vs_sh": "CONFIG_IP_VS_SH",
    "nf_conntrack": "CONFIG_NF_CONNTRACK",
    "br_netfilter": "CONFIG_BRIDGE_NETFILTER",
    "overlay": "CONFIG_OVERLAY_FS",
    "nf_tables": "CONFIG_NF_TABLES",
    "nft_compat": "CONFIG_NFT_COMPAT",
    "ip_tables": "CONFIG_IP_NF_IPTABLES",
    "ip6_tables": "CONFIG_IP6_NF_IPTABLES",
    "ip_set": "CONFIG_IP_SET",
    "dummy": "CONFIG_DUMMY",
    "vxlan": "CONFIG_VXLAN",
    "ipip": "CONFIG_NET_IPIP",
}
# what kube-proxy's ipvs mode cannot work without (the three schedulers it documents, plus conntrack)
IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
    "net.netfilter.nf_conntrack_max",
)
# the IPVS sysctls kube-proxy sets in ipvs mode; the whole net.ipv4.vs folder is reported when present
IPVS_SYSCTLS = (
    "net.ipv4.vs.conntrack",
    "net.ipv4.vs.conn_reuse_mode",
    "net.ipv4.vs.expire_nodest_conn",
    "net.ipv4.vs.expire_quiescent_template",
)

SAVE_TOOLS = (
    ("legacy", "ipv4", "iptables-legacy-save"),
    ("legacy", "ipv6", "ip6tables-legacy-save"),
    ("nft", "ipv4", "iptables-nft-save"),
    ("nft", "ipv6", "ip6tables-nft-save"),
)
KUBE_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")

# tables iptables-nft, ip6tables-nft, arptables-nft and ebtables-nft create, by family
IPTABLES_NFT_TABLES = {
    "ip": ("filter", "nat", "mangle", "raw", "security"),
    "ip6": ("filter", "nat", "mangle", "raw", "security"),
    "arp": ("filter",),
    "bridge": ("filter", "nat", "broute"),
}
OWN_OWNER = "kubenode.dataplane"

PROCESSES = ("kube-proxy", "kubelet", "calico-node", "speaker")

CALICO_TUNNELS = ("tunl0", "vxlan.calico", "vxlan-v6.calico", "wireguard.cali", "wg-v6.cali")
# devices Felix's eBPF dataplane creates
CALICO_BPF_DEVICES = ("bpfnat.cali", "bpfin.cali", "bpfout.cali")


# ---------------------------------------------------------------------------------------------
# reading the node's files


class NodeFiles:
    """Reads the node's files; ``root`` lets unit tests point it at a captured tree."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, path: str) -> str:
        if self.root == "/":
            return path
        return os.path.join(self.root, path.lstrip("/"))

    def read_bytes(self, path: str) -> t.Optional[bytes]:
        try:
            with open(self.path(path), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def read(self, path: str) -> t.Optional[str]:
        data = self.read_bytes(path)
        if data is None:
            return None
        if path.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                return None
        return data.decode("utf-8", "replace")

    def listdir(self, path: str) -> t.Optional[t.List[str]]:
        try:
            return sorted(os.listdir(self.path(path)))
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))


# ---------------------------------------------------------------------------------------------
# parsers (pure)


def parse_kernel_config(text: str) -> t.Dict[str, str]:
    """CONFIG_ symbols to their value; ``# CONFIG_X is not set`` becomes ``n``."""
    out: t.Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2).strip('"')
            continue
        match = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if match:
            out[match.group(1)] = "n"
    return out


def tristate(config: t.Optional[t.Mapping[str, str]], symbol: str) -> str:
    """``builtin``, ``module`` or ``missing`` (a symbol absent from a config is not set); ``unknown`` without a config."""
    if config is None:
        return "unknown"
    return {"y": "builtin", "m": "module"}.get(config.get(symbol, "n"), "missing")


def _module_name(path: str) -> str:
    base = path.strip().rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    # the kernel treats '-' and '_' in module names as the same character
    return base.replace("-", "_")


def parse_proc_modules(text: str) -> t.Dict[str, str]:
    """/proc/modules: module name to its state (Live, Loading, Unloading)."""
    out: t.Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts:
            out[parts[0]] = parts[4] if len(parts) > 4 else ""
    return out


def parse_modules_builtin(text: str) -> t.Set[str]:
    """modules.builtin (one path per line) to module names."""
    return {_module_name(line) for line in text.splitlines() if line.strip()}


def parse_modules_dep(text: str) -> t.Set[str]:
    """modules.dep (``path: deps``) to the names of the modules that can be loaded."""
    return {_module_name(line.split(":", 1)[0]) for line in text.splitlines() if ":" in line}


# where systemd-modules-load (and Debian's /etc/modules) find the modules to load at boot
MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/run/modules-load.d", "/usr/local/lib/modules-load.d", "/usr/lib/modules-load.d")


def module_status(
    name: str,
    loaded: t.Optional[t.Mapping[str, str]],
    builtin: t.Optional[t.Set[str]],
    available: t.Optional[t.Set[str]],
    config: t.Optional[t.Mapping[str, str]],
    in_sysfs: bool,
) -> str:
    """``loaded``, ``builtin``, ``available`` (can be loaded), ``missing`` or ``unknown``."""
    if loaded is not None and name in loaded:
        return "loaded"
    if builtin is not None and name in builtin:
        return "builtin"
    symbol = MODULES.get(name)
    if config is not None and symbol and config.get(symbol) == "y":
        return "builtin"
    # /sys/module/NAME exists for built-in modules with parameters; loaded ones are in /proc/modules
    if in_sysfs and loaded is None:
        return "builtin"
    if available is not None:
        return "available" if name in available else "missing"
    if config is not None and symbol:
        return "available" if config.get(symbol) == "m" else "missing"
    return "unknown"


def parse_iptables_save(text: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """iptables-save output to {table: {chains: {chain: rule count}, policies: {builtin chain: policy}}}."""
    tables: t.Dict[str, t.Dict[str, t.Any]] = {}
    current: t.Optional[t.Dict[str, t.Any]] = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {"chains": {}, "policies": {}})
        elif current is None:
            continue
        elif line.startswith(":"):
            fields = line[1:].split()
            current["chains"].setdefault(fields[0], 0)
            if len(fields) > 1 and fields[1] != "-":
                current["policies"][fields[0]] = fields[1]
        elif line.startswith("-A "):
            chain = line.split()[1]
            current["chains"][chain] = current["chains"].get(chain, 0) + 1
        elif line == "COMMIT":
            current = None
    return tables


def save_header_backend(text: str) -> t.Optional[str]:
    """The backend an iptables-save header names: ``(nf_tables)`` for nft; legacy headers name none."""
    match = re.search(r"^# Generated by ip6?tables-\S*save v[\d.]+( \(nf_tables\))?", text, re.M)
    if not match:
        return None
    return "nft" if match.group(1) else "legacy"


def summarise_save(tables: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    """Counts that tell whether a backend is in use and by whom."""
    rules = 0
    user_chains: t.List[str] = []
    changed_policies = []
    for table, data in tables.items():
        rules += sum(data["chains"].values())
        user_chains += [c for c in data["chains"] if c not in data["policies"]]
        changed_policies += [f"{table}/{c}={p}" for c, p in sorted(data["policies"].items()) if p != "ACCEPT"]
    mangle = tables.get("mangle", {}).get("chains", {})
    nat = tables.get("nat", {}).get("chains", {})
    return {
        "tables": sorted(tables),
        "rules": rules,
        "chains": len(user_chains),
        "kube_chains": sum(1 for c in user_chains if c.startswith("KUBE-")),
        "calico_chains": sum(1 for c in user_chains if c.startswith("cali-")),
        "kubernetes_hint": any(c in mangle for c in KUBE_HINT_CHAINS),
        "kube_services": "KUBE-SERVICES" in nat,
        "policies": changed_policies,
    }


def parse_iptables_version(text: str) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    """``iptables -V``: (version, backend); iptables before 1.8 knows only the legacy backend."""
    match = re.search(r"v(\d+(?:\.\d+)+)(?:\s+\((nf_tables|legacy)\))?", text)
    if not match:
        return None, None
    version, kind = match.group(1), match.group(2)
    if kind is None:
        return version, "legacy"
    return version, "nft" if kind == "nf_tables" else "legacy"


def parse_nft_tables_json(text: str) -> t.List[t.Tuple[str, str]]:
    data = json.loads(text)
    return [(item["table"]["family"], item["table"]["name"]) for item in data.get("nftables", []) if "table" in item]


def parse_nft_tables_text(text: str) -> t.List[t.Tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^table (\S+) (\S+)\s*$", text, re.M)]


def table_owner(family: str, name: str) -> str:
    """The program that most likely made an nftables table, judged by its family and name."""
    if name == "kube-proxy" and family in ("ip", "ip6"):
        return "kube-proxy"
    if name == "calico" or name.startswith("calico-"):
        return "calico"
    if name == "firewalld":
        return "firewalld"
    if name.startswith("docker"):
        return "docker"
    if family == "inet" and name == OWN_NFT_TABLE:
        return OWN_OWNER
    if name in IPTABLES_NFT_TABLES.get(family, ()):
        return "iptables-nft"
    return "unknown"


def _hex_address(text: str) -> str:
    if text.startswith("["):
        # written out in full there; shown in the usual compressed form
        return str(ipaddress.IPv6Address(text.strip("[]")))
    value = int(text, 16)
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def parse_proc_ip_vs(text: str) -> t.List[t.Dict[str, t.Any]]:
    """/proc/net/ip_vs: virtual services with their real-server counts (addresses in hex there)."""
    services: t.List[t.Dict[str, t.Any]] = []
    for line in text.splitlines():
        if line.startswith("  ->"):
            fields = line.split()
            if services and len(fields) > 1 and fields[1] != "RemoteAddress:Port":
                services[-1]["destinations"] += 1
            continue
        fields = line.split()
        if not fields or fields[0] not in ("TCP", "UDP", "SCTP", "FWM"):
            continue
        service: t.Dict[str, t.Any] = {"protocol": fields[0].lower(), "scheduler": fields[2] if len(fields) > 2 else "",
                                       "flags": " ".join(fields[3:]), "destinations": 0}
        if fields[0] == "FWM":
            service.update(address=None, port=None, fwmark=int(fields[1], 16))
        else:
            addr, _sep, port = fields[1].rpartition(":")
            service.update(address=_hex_address(addr), port=int(port, 16), fwmark=None)
        services.append(service)
    return services


def parse_ip_addr_json(text: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """``ip -j -d addr show``: interface name to kind, state and addresses."""
    out: t.Dict[str, t.Dict[str, t.Any]] = {}
    for link in json.loads(text or "[]"):
        name = link.get("ifname")
        if not name:
            continue
        out[name] = {
            "kind": (link.get("linkinfo") or {}).get("info_kind"),
            "up": "UP" in (link.get("flags") or []),
            "addresses": [a["local"] for a in link.get("addr_info") or [] if "local" in a],
        }
    return out


def _scan_kube_proxy_yaml(text: str) -> t.Dict[str, t.Any]:
    """Top-level ``mode`` and ``ipvs.strictARP`` of a KubeProxyConfiguration, without a YAML library."""
    data: t.Dict[str, t.Any] = {}
    block = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line[0] in " \t"
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        value = value.strip().strip("'\"")
        if not indented:
            block = key
            if value:
                data[key] = value
            elif key not in data:
                data[key] = {}
        elif block == "ipvs" and key == "strictARP":
            data["ipvs"]["strictARP"] = value.lower() == "true"
    return data


def parse_kube_proxy_config(text: str) -> t.Dict[str, t.Any]:
    """mode and strictARP of a KubeProxyConfiguration (YAML or JSON).

    An empty mode is kube-proxy's default, iptables on Linux.
    """
    data: t.Any = None
    try:
        data = json.loads(text)
    except ValueError:
        if not HAS_YAML:
            data = _scan_kube_proxy_yaml(text)
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    ipvs = data.get("ipvs") if isinstance(data.get("ipvs"), dict) else {}
    strict = ipvs.get("strictARP", False)
    if isinstance(strict, str):
        strict = strict.lower() == "true"
    return {
        "kind": data.get("kind"),
        "mode": str(data.get("mode") or "iptables"),
        "strict_arp": bool(strict),
    }


def parse_kube_version(text: str) -> t.Optional[str]:
    """``kubelet --version`` (``Kubernetes v1.35.0``) to ``1.35.0``."""
    match = re.search(r"v(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def version_tuple(version: t.Optional[str]) -> t.Tuple[int, ...]:
    if not version:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def parse_cmdline(data: t.Optional[bytes]) -> t.List[str]:
    if not data:
        return []
    return [a.decode("utf-8", "replace") for a in data.split(b"\0") if a]


def flag_value(argv: t.Sequence[str], flag: str) -> t.Optional[str]:
    """Value of ``--flag=value`` or ``--flag value`` in an argv."""
    for index, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
    return None


def check_sysctl_names(names: t.Sequence[str]) -> None:
    """Refuses names that are not sysctl keys, before anything is read (one sentence naming the entry)."""
    for index, name in enumerate(names):
        path = key_path(name, PROC_SYS)
        if not re.match(r"^[a-z0-9_-]+(\.[A-Za-z0-9_/-]+)*$", name or "") or os.path.normpath(path) != path:
            raise DataplaneError(f"extra_sysctls[{index}] '{name}' is not a sysctl name such as net.ipv4.ip_forward; nothing was read")


def metrics_url(address: str) -> str:
    """URL of kube-proxy's /proxyMode for a metricsBindAddress; a wildcard host is asked on loopback."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(address)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/proxyMode"


# ---------------------------------------------------------------------------------------------
# gathering


class Gatherer:
    """Reads each part of the node once; ``gather()`` returns the whole report."""

    def __init__(
        self,
        runner: Runner,
        files: NodeFiles,
        fetch: t.Callable[[str, float], str],
        metrics_address: str = DEFAULT_METRICS_ADDRESS,
        metrics_timeout: float = 2.0,
        kube_proxy_config: t.Optional[str] = None,
        metallb: str = "auto",
        extra_sysctls: t.Sequence[str] = (),
    ) -> None:
        self.runner = runner
        self.files = files
        self.fetch = fetch
        self.metrics_address = metrics_address
        self.metrics_timeout = metrics_timeout
        self.kube_proxy_config = kube_proxy_config
        self.metallb = metallb
        self.extra_sysctls = list(extra_sysctls)
        self.unavailable: t.List[t.Dict[str, str]] = []

    def _unavailable(self, part: str, reason: str) -> None:
        self.unavailable.append({"part": part, "reason": reason})

    def _run(self, part: str, argv: t.List[str]) -> t.Optional[str]:
        """Output of a read-only command, or None (recorded as unavailable) when it fails."""
        try:
            return self.runner.run(argv, what=f"reading {part}").out
        except DataplaneError as exc:
            self._unavailable(part, str(exc))
            return None

    # -- kernel ------------------------------------------------------------------------------

    def kernel(self) -> t.Tuple[t.Dict[str, t.Any], t.Optional[t.Dict[str, str]]]:
        release = (self.files.read("/proc/sys/kernel/osrelease") or os.uname().release).strip()
        config = None
        source = None
        for path in ("/proc/config.gz", f"/boot/config-{release}"):
            text = self.files.read(path)
            if text:
                config, source = parse_kernel_config(text), path
                break
        if config is None:
            self._unavailable("kernel config", f"neither /proc/config.gz nor /boot/config-{release} is readable")
        features = {name: tristate(config, symbol) for name, symbol in KERNEL_FEATURES.items()}
        if config is not None and "CONFIG_IP_NF_IPTABLES_LEGACY" not in config:
            # kernels before 6.17 have no such symbol: legacy iptables comes with ip_tables there
            features["iptables_legacy"] = features["ip_tables"]
        symbols = ["CONFIG_MODULES"] + sorted(set(KERNEL_FEATURES.values()) | set(MODULES.values()))
        result = {
            "release": release,
            "config_source": source,
            # the raw values (y, m, n) of the symbols that matter; n also stands for "not in the config"
            "config": {s: (config.get(s, "n") if config is not None else None) for s in symbols},
            "features": features,
            # kube-proxy's nftables mode refuses kernels older than 5.13
            "nftables_proxy_capable": version_tuple(release)[:2] >= (5, 13),
        }
        return result, config

    def modules(self, release: str, config: t.Optional[t.Mapping[str, str]]) -> t.Dict[str, t.Any]:
        proc = self.files.read("/proc/modules")
        loaded = parse_proc_modules(proc) if proc is not None else None
        builtin_text = self.files.read(f"/lib/modules/{release}/modules.builtin")
        builtin = parse_modules_builtin(builtin_text) if builtin_text is not None else None
        dep_text = self.files.read(f"/lib/modules/{release}/modules.dep")
        available = parse_modules_dep(dep_text) if dep_text is not None else None
        supported = loaded is not None or (config or {}).get("CONFIG_MODULES") == "y"
        state = {
            name: module_status(name, loaded, builtin, available, config, self.files.exists(f"/sys/module/{name}"))
            for name in MODULES
        }
        at_boot: t.Set[str] = set()
        for directory in MODULES_LOAD_DIRS:
            for name in self.files.listdir(directory) or []:
                if name.endswith(".conf"):
                    at_boot.update(parse_modules_load(self.files.read(f"{directory}/{name}")))
        at_boot.update(parse_modules_load(self.files.read("/etc/modules")))
        return {
            "loadable": supported,
            "loaded_total": len(loaded) if loaded is not None else 0,
            "state": state,
            "at_boot": sorted(name for name in MODULES if name in at_boot),
        }

    def sysctls(self) -> t.Dict[str, t.Optional[str]]:
        names = list(SYSCTLS)
        vs = self.files.listdir(key_path("net.ipv4.vs", PROC_SYS))
        names += [f"net.ipv4.vs.{n}" for n in vs] if vs is not None else list(IPVS_SYSCTLS)
        names += [n for n in self.extra_sysctls if n not in names]
        out: t.Dict[str, t.Optional[str]] = {}
        for name in names:
            text = self.files.read(key_path(name, PROC_SYS))
            out[name] = normalise_value(text) if text is not None else None
        return out

    # -- iptables ----------------------------------------------------------------------------

    def iptables(self) -> t.Dict[str, t.Any]:
        result: t.Dict[str, t.Any] = {"version": None, "default_backend": None, "backends": {}}
        binary = self.runner.which("iptables", required=False)
        if binary:
            out = self._run("iptables version", [binary, "-V"])
            if out is not None:
                result["version"], result["default_backend"] = parse_iptables_version(out)
        dumps: t.Dict[str, t.Dict[str, t.Any]] = {"legacy": {}, "nft": {}}
        found_any = False
        for backend, family, tool in SAVE_TOOLS:
            path = self.runner.which(tool, required=False)
            if not path:
                continue
            found_any = True
            out = self._run(f"{tool} output", [path])
            if out is not None:
                dumps[backend][family] = summarise_save(parse_iptables_save(out))
        if not found_any:
            # an iptables older than 1.8 has only iptables-save, and only the legacy backend
            for family, tool in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
                path = self.runner.which(tool, required=False)
                if not path:
                    continue
                out = self._run(f"{tool} output", [path])
                if out is not None:
                    backend = save_header_backend(out) or result["default_backend"] or "legacy"
                    dumps[backend][family] = summarise_save(parse_iptables_save(out))
                    found_any = True
        if not found_any:
            self._unavailable("iptables", "no iptables-save program is installed")
        in_use, kubernetes = [], []
        for backend in ("legacy", "nft"):
            families = dumps[backend]
            if not families:
                result["backends"][backend] = {"available": False}
                continue
            total = {
                "available": True,
                "rules": sum(f["rules"] for f in families.values()),
                "chains": sum(f["chains"] for f in families.values()),
                "kube_chains": sum(f["kube_chains"] for f in families.values()),
                "calico_chains": sum(f["calico_chains"] for f in families.values()),
                "kubernetes_hint": any(f["kubernetes_hint"] for f in families.values()),
                "kube_services": any(f["kube_services"] for f in families.values()),
                "policies": [p for f in families.values() for p in f["policies"]],
                "families": families,
            }
            result["backends"][backend] = total
            if total["rules"] or total["chains"] or total["policies"]:
                in_use.append(backend)
            if total["kubernetes_hint"]:
                kubernetes.append(backend)
        result["in_use"] = in_use
        result["mixed"] = len(in_use) > 1
        result["backend"] = in_use[0] if len(in_use) == 1 else ("mixed" if in_use else None)
        result["kubernetes_backend"] = kubernetes[0] if len(kubernetes) == 1 else (None if not kubernetes else "both")
        return result

    # -- nftables ----------------------------------------------------------------------------

    def nftables(self) -> t.Dict[str, t.Any]:
        nft = self.runner.which("nft", required=False)
        if not nft:
            self._unavailable("nftables", "the program 'nft' is not installed")
            return {"available": False, "tables": [], "owners": {}}
        tables: t.Optional[t.List[t.Tuple[str, str]]] = None
        try:
            tables = parse_nft_tables_json(self.runner.run([nft, "-j", "list", "tables"], what="listing nftables tables").out)
        except (DataplaneError, ValueError, KeyError):
            # nft built without JSON support: the plain listing has the same two fields
            out = self._run("nftables tables", [nft, "list", "tables"])
            tables = parse_nft_tables_text(out) if out is not None else None
        if tables is None:
            return {"available": False, "tables": [], "owners": {}}
        listed = [{"family": f, "name": n, "owner": table_owner(f, n)} for f, n in tables]
        owners: t.Dict[str, int] = {}
        for table in listed:
            owners[table["owner"]] = owners.get(table["owner"], 0) + 1
        return {"available": True, "tables": listed, "owners": owners}

    # -- links, IPVS ------------------------------------------------------------------------

    def links(self) -> t.Dict[str, t.Dict[str, t.Any]]:
        ip = self.runner.which("ip", required=False)
        if ip:
            out = self._run("network interfaces", [ip, "-j", "-d", "addr", "show"])
            if out is not None:
                try:
                    return parse_ip_addr_json(out)
                except ValueError:
                    self._unavailable("network interfaces", "'ip -j' did not print JSON")
        else:
            self._unavailable("interface addresses", "the program 'ip' is not installed; only names were read from /sys")
        names = self.files.listdir("/sys/class/net") or []
        return {n: {"kind": None, "up": None, "addresses": []} for n in names}

    def ipvs(self, links: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
        text = self.files.read("/proc/net/ip_vs")
        kube = links.get("kube-ipvs0")
        result: t.Dict[str, t.Any] = {
            "available": text is not None,
            "services": 0,
            "services_on_kube_ipvs0": 0,
            "protocols": {},
            "kube_ipvs0": {
                "present": kube is not None,
                "kind": kube.get("kind") if kube else None,
                "addresses": len(kube["addresses"]) if kube else 0,
            },
        }
        if text is None:
            return result
        bound = set(kube["addresses"]) if kube else set()
        services = parse_proc_ip_vs(text)
        result["services"] = len(services)
        result["services_on_kube_ipvs0"] = sum(1 for s in services if s["address"] in bound)
        for service in services:
            result["protocols"][service["protocol"]] = result["protocols"].get(service["protocol"], 0) + 1
        return result

    # -- processes, kube-proxy ---------------------------------------------------------------

    def processes(self) -> t.Dict[str, t.List[t.Dict[str, t.Any]]]:
        found: t.Dict[str, t.List[t.Dict[str, t.Any]]] = {name: [] for name in PROCESSES}
        for pid in self.files.listdir("/proc") or []:
            if not pid.isdigit():
                continue
            comm = (self.files.read(f"/proc/{pid}/comm") or "").strip()
            if comm not in found:
                continue
            entry: t.Dict[str, t.Any] = {"pid": int(pid), "argv": parse_cmdline(self.files.read_bytes(f"/proc/{pid}/cmdline"))}
            if comm == "speaker":
                environ = parse_cmdline(self.files.read_bytes(f"/proc/{pid}/environ"))
                entry["metallb"] = any(e.startswith("METALLB_") for e in environ)
            found[comm].append(entry)
        return found

    def kube_proxy(
        self,
        procs: t.Mapping[str, t.List[t.Dict[str, t.Any]]],
        iptables: t.Mapping[str, t.Any],
        nftables: t.Mapping[str, t.Any],
        ipvs: t.Mapping[str, t.Any],
    ) -> t.Dict[str, t.Any]:
        result: t.Dict[str, t.Any] = {
            "mode": None,
            "mode_source": None,
            "running": bool(procs["kube-proxy"]),
            "endpoint": {"url": None, "reachable": False, "error": None},
            "configured_mode": None,
            "config_path": None,
            "strict_arp": None,
            "strict_arp_source": None,
            "evidence": [],
        }
        # 1. what the running kube-proxy says of itself
        if self.metrics_address:
            url = metrics_url(self.metrics_address)
            result["endpoint"]["url"] = url
            try:
                answer = self.fetch(url, self.metrics_timeout).strip()
            except Exception as exc:  # any failure to ask is an answer: not reachable
                reason = getattr(exc, "reason", None) or exc
                result["endpoint"]["error"] = str(reason) or exc.__class__.__name__
            else:
                result["endpoint"]["reachable"] = True
                if answer in PROXY_MODES:
                    result["mode"], result["mode_source"] = answer, "endpoint"
                else:
                    result["endpoint"]["error"] = f"unexpected answer {answer[:60]!r}"
        # 2. how it is configured: the given file, or the running process's --config / --proxy-mode
        config_path, config_text = self._kube_proxy_config_file(procs)
        if config_path:
            result["config_path"] = config_path
        if config_path and config_text is not None:
            try:
                parsed = parse_kube_proxy_config(config_text)
            except ValueError as exc:
                self._unavailable("kube-proxy configuration", f"{config_path} could not be read as a KubeProxyConfiguration: {exc}")
            else:
                result["configured_mode"] = parsed["mode"]
                result["strict_arp"], result["strict_arp_source"] = parsed["strict_arp"], "config"
        for proc in procs["kube-proxy"]:
            flag = flag_value(proc["argv"], "--proxy-mode")
            if flag:
                # command-line flags win over the config file in kube-proxy
                result["configured_mode"] = flag
        # 3. the rules kube-proxy leaves, which only suggest a mode
        evidence = []
        if ipvs["kube_ipvs0"]["present"] and ipvs["services"]:
            evidence.append(("ipvs", f"kube-ipvs0 with {ipvs['kube_ipvs0']['addresses']} addresses and {ipvs['services']} IPVS virtual services"))
        kp_tables = [f"{t['family']} {t['name']}" for t in nftables["tables"] if t["owner"] == "kube-proxy"]
        if kp_tables:
            evidence.append(("nftables", "nftables table " + " and ".join(kp_tables)))
        kube_services = [b for b, d in iptables["backends"].items() if d.get("kube_services")]
        if kube_services:
            evidence.append(("iptables", "KUBE-SERVICES chain in the nat table (" + ", ".join(kube_services) + " backend)"))
        result["evidence"] = [text for _mode, text in evidence]
        if result["mode"] is None and evidence:
            result["mode"], result["mode_source"] = evidence[0][0], "inferred"
        return result

    def _kube_proxy_config_file(self, procs: t.Mapping[str, t.List[t.Dict[str, t.Any]]]) -> t.Tuple[t.Optional[str], t.Optional[str]]:
        if self.kube_proxy_config:
            text = self.files.read(self.kube_proxy_config)
            if text is None:
                self._unavailable("kube-proxy configuration", f"{self.kube_proxy_config} is not readable")
            return self.kube_proxy_config, text
        for proc in procs["kube-proxy"]:
            path = flag_value(proc["argv"], "--config")
            if not path:
                continue
            # a containerised kube-proxy sees its ConfigMap inside its own root
            for candidate in (f"/proc/{proc['pid']}/root{path}", path):
                text = self.files.read(candidate)
                if text is not None:
                    return candidate, text
        return None, None

    # -- CNI, MetalLB, Kubernetes ------------------------------------------------------------

    def cni(
        self,
        links: t.Mapping[str, t.Mapping[str, t.Any]],
        iptables: t.Mapping[str, t.Any],
        nftables: t.Mapping[str, t.Any],
        procs: t.Mapping[str, t.List[t.Dict[str, t.Any]]],
    ) -> t.Dict[str, t.Any]:
        evidence: t.List[str] = []
        cali = [n for n in links if n.startswith("cali")]
        if cali:
            evidence.append(f"{len(cali)} cali* workload interfaces")
        for name in CALICO_TUNNELS:
            link = links.get(name)
            # tunl0 appears whenever the ipip module loads; only an address on it is Calico's doing
            if link and (name != "tunl0" or link["addresses"]):
                evidence.append(f"{name} interface")
        chains = {b: d.get("calico_chains", 0) for b, d in iptables["backends"].items() if d.get("calico_chains")}
        for backend, count in chains.items():
            evidence.append(f"{count} cali-* chains in iptables ({backend} backend)")
        tables = [f"{t['family']} {t['name']}" for t in nftables["tables"] if t["owner"] == "calico"]
        if tables:
            evidence.append("nftables table " + " and ".join(tables))
        if procs["calico-node"]:
            evidence.append("calico-node process")
        confs = [n for n in self.files.listdir("/etc/cni/net.d") or [] if "calico" in n]
        if confs:
            evidence.append("CNI configuration " + ", ".join(confs))
        dataplane = None
        if evidence:
            if any(n in links for n in CALICO_BPF_DEVICES):
                dataplane = "bpf"
            elif tables:
                dataplane = "nftables"
            elif chains:
                dataplane = "iptables"
        others = []
        if any(n.startswith("cilium_") for n in links):
            others.append("cilium")
        if any(n.startswith("flannel") for n in links):
            others.append("flannel")
        name = "calico" if evidence else (others[0] if others else None)
        return {"name": name, "evidence": evidence, "calico_dataplane": dataplane, "other": others}

    def metallb_present(self, procs: t.Mapping[str, t.List[t.Dict[str, t.Any]]]) -> t.Dict[str, t.Any]:
        if self.metallb != "auto":
            return {"present": self.metallb == "present", "evidence": [f"declared {self.metallb} by the metallb option"]}
        speakers = [p for p in procs["speaker"] if p.get("metallb")]
        evidence = [f"MetalLB speaker process (pid {p['pid']})" for p in speakers]
        return {"present": bool(speakers), "evidence": evidence}

    def kubernetes(self) -> t.Dict[str, t.Any]:
        kubelet = self.runner.which("kubelet", required=False)
        version = None
        if kubelet:
            out = self._run("kubelet version", [kubelet, "--version"])
            version = parse_kube_version(out or "")
        return {"kubelet": kubelet, "version": version}

    # -- all of it ---------------------------------------------------------------------------

    def gather(self) -> t.Dict[str, t.Any]:
        kernel, config = self.kernel()
        # before any tool runs: listing nftables can make the kernel autoload nf_tables
        modules = self.modules(kernel["release"], config)
        sysctls = self.sysctls()
        procs = self.processes()
        iptables = self.iptables()
        nftables = self.nftables()
        links = self.links()
        ipvs = self.ipvs(links)
        kube_proxy = self.kube_proxy(procs, iptables, nftables, ipvs)
        if kube_proxy["strict_arp"] is None and (kube_proxy["mode"] or kube_proxy["configured_mode"]) == "ipvs":
            # strictARP makes kube-proxy set these two; without its config they are the evidence
            ignore, announce = sysctls.get("net.ipv4.conf.all.arp_ignore"), sysctls.get("net.ipv4.conf.all.arp_announce")
            if ignore is not None and announce is not None:
                kube_proxy["strict_arp"] = ignore in ("1", "2") and announce == "2"
                kube_proxy["strict_arp_source"] = "sysctl"
        report = {
            "kernel": kernel,
            "modules": modules,
            "sysctls": sysctls,
            "iptables": iptables,
            "nftables": nftables,
            "ipvs": ipvs,
            "kube_proxy": kube_proxy,
            "kubernetes": self.kubernetes(),
            "cni": self.cni(links, iptables, nftables, procs),
            "metallb": self.metallb_present(procs),
            "interfaces": len(links),
        }
        report["findings"] = findings(report)
        report["unavailable"] = self.unavailable
        return report


# ---------------------------------------------------------------------------------------------
# warnings


def _finding(ident: str, message: str, remedy: str) -> t.Dict[str, str]:
    return {"id": ident, "message": message, "remedy": remedy}


def findings(report: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, str]]:
    """The warnings the report supports, each with a one-line remedy. Nothing on a host without Kubernetes."""
    out = []
    ipt = report["iptables"]
    kp = report["kube_proxy"]
    mods = report["modules"]["state"]
    mode = kp["mode"] or kp["configured_mode"]
    if ipt["mixed"]:
        counts = ", ".join(f"{b} {ipt['backends'][b]['rules']} rules" for b in ipt["in_use"])
        keep = ipt["kubernetes_backend"] if ipt["kubernetes_backend"] in ("nft", "legacy") else "one of them"
        out.append(_finding(
            "mixed_iptables_backends",
            f"both iptables backends hold rules ({counts}); rules in one are invisible to tools using the other",
            f"keep {keep} (kubenode.dataplane.iptables_backend), move the other backend's rules to it and flush them there",
        ))
    if ipt["kubernetes_backend"] in ("nft", "legacy") and ipt["default_backend"] and ipt["default_backend"] != ipt["kubernetes_backend"]:
        out.append(_finding(
            "iptables_command_mismatch",
            f"Kubernetes' hint chains are in the {ipt['kubernetes_backend']} backend but the iptables command uses {ipt['default_backend']}",
            f"point the iptables alternatives at iptables-{ipt['kubernetes_backend']} (kubenode.dataplane.iptables_backend)",
        ))
    if mode == "ipvs":
        if report["kernel"]["features"]["ip_vs"] == "missing":
            out.append(_finding(
                "ipvs_kernel_missing",
                "kube-proxy is set to ipvs mode but this kernel is built without IP_VS",
                "use kube-proxy's nftables mode (kernel >= 5.13) or iptables mode on this kernel",
            ))
        else:
            missing = [m for m in IPVS_MODULES if mods.get(m) not in ("loaded", "builtin")]
            if missing:
                out.append(_finding(
                    "ipvs_modules_missing",
                    f"kube-proxy is in ipvs mode but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not loaded",
                    "load them and make them persistent with the kubenode.dataplane.kernel_modules role, then restart kube-proxy",
                ))
        if report["metallb"]["present"] and kp["strict_arp"] is False:
            out.append(_finding(
                "strict_arp_off_with_metallb",
                f"MetalLB is present and kube-proxy runs in ipvs mode with strictARP off (seen in its {kp['strict_arp_source']})",
                "set ipvs.strictARP: true in kube-proxy's configuration (kubenode.dataplane.kube_proxy_config) and restart kube-proxy",
            ))
        version = report["kubernetes"]["version"]
        if version_tuple(version)[:2] >= (1, 35):
            out.append(_finding(
                "ipvs_deprecated",
                f"kube-proxy's ipvs mode is deprecated since Kubernetes 1.35 (KEP-5495) and this node runs {version}",
                "plan the move to nftables mode (kernel >= 5.13): kubenode.dataplane.kube_proxy_config mode nftables",
            ))
    if report["ipvs"]["kube_ipvs0"]["present"] and kp["mode_source"] == "endpoint" and kp["mode"] != "ipvs":
        out.append(_finding(
            "stale_kube_ipvs0",
            f"kube-ipvs0 exists but kube-proxy runs in {kp['mode']} mode; Calico takes kube-ipvs0 as the sign of ipvs mode",
            "delete the leftover interface (ip link del kube-ipvs0) and restart calico-node",
        ))
    kube_seen = bool(mode or kp["running"] or report["kubernetes"]["kubelet"])
    if kube_seen and report["sysctls"].get("net.ipv4.ip_forward") == "0":
        out.append(_finding(
            "ip_forward_off",
            "net.ipv4.ip_forward is 0 on a Kubernetes node, so pod and service traffic is not forwarded",
            "set net.ipv4.ip_forward=1 persistently (the kubenode.dataplane.node role does)",
        ))
    return out
