# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel modules: read what the running kernel has, load/unload/reload, persist in the
collection's own files.

State comes from the kernel's own records (/proc/modules, /sys/module, the release's
modules.dep, modules.builtin and modules.builtin.modinfo) rather than from one `modinfo` or
`lsmod` per module: a whole set is read with a handful of file reads. Programs (modprobe,
rmmod, modinfo) run only to resolve an alias, to dry-run a load, and to change the kernel.

Persistence lives only in two files the collection owns, /etc/modules-load.d/<prefix>.conf and
/etc/modprobe.d/<prefix>.conf; no other file is read for writing, let alone edited.
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
import typing as t

from dataclasses import dataclass, field

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend
from ansible_collections.kubenode.dataplane.plugins.module_utils._modfiles import parse_modules_load
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

DEFAULT_PREFIX = "kubenode-dataplane"
MODULES_LOAD_DIR = "/etc/modules-load.d"
MODPROBE_DIR = "/etc/modprobe.d"
BLOCK_COMMAND = "/bin/false"
NOTHING = "nothing was changed"

# Names the kernel renamed or merged away: (new name, first release without the old one).
# Used only when the old name is not available on the running kernel, so distribution kernels
# that backported the merge (RHEL 8's 4.18) resolve too.
RENAMED: t.Dict[str, t.Tuple[str, str]] = {
    "nf_conntrack_ipv4": ("nf_conntrack", "4.19"),
    "nf_conntrack_ipv6": ("nf_conntrack", "4.19"),
    "nf_nat_ipv4": ("nf_nat", "5.1"),
    "nf_nat_ipv6": ("nf_nat", "5.1"),
}

# Kernels built without module support (CONFIG_MODULES unset) install no modules.builtin and
# show a built-in module in /sys/module only when it has parameters. For the dataplane modules
# the kernel configuration is then the remaining evidence: module name -> Kconfig symbol.
KCONFIG: t.Dict[str, str] = {
    "bridge": "BRIDGE",
    "br_netfilter": "BRIDGE_NETFILTER",
    "dummy": "DUMMY",
    "geneve": "GENEVE",
    "ip6_tables": "IP6_NF_IPTABLES",
    "ip6table_filter": "IP6_NF_FILTER",
    "ip6table_mangle": "IP6_NF_MANGLE",
    "ip6table_nat": "IP6_NF_NAT",
    "ip6table_raw": "IP6_NF_RAW",
    "ip_set": "IP_SET",
    "ip_tables": "IP_NF_IPTABLES",
    "ip_vs": "IP_VS",
    "ip_vs_dh": "IP_VS_DH",
    "ip_vs_lc": "IP_VS_LC",
    "ip_vs_mh": "IP_VS_MH",
    "ip_vs_nq": "IP_VS_NQ",
    "ip_vs_rr": "IP_VS_RR",
    "ip_vs_sed": "IP_VS_SED",
    "ip_vs_sh": "IP_VS_SH",
    "ip_vs_wlc": "IP_VS_WLC",
    "ip_vs_wrr": "IP_VS_WRR",
    "ipip": "NET_IPIP",
    "iptable_filter": "IP_NF_FILTER",
    "iptable_mangle": "IP_NF_MANGLE",
    "iptable_nat": "IP_NF_NAT",
    "iptable_raw": "IP_NF_RAW",
    "ipvlan": "IPVLAN",
    "macvlan": "MACVLAN",
    "nf_conntrack": "NF_CONNTRACK",
    "nf_defrag_ipv4": "NF_DEFRAG_IPV4",
    "nf_defrag_ipv6": "NF_DEFRAG_IPV6",
    "nf_nat": "NF_NAT",
    "nf_tables": "NF_TABLES",
    "nfnetlink": "NETFILTER_NETLINK",
    "nft_compat": "NFT_COMPAT",
    "nft_ct": "NFT_CT",
    "nft_masq": "NFT_MASQ",
    "nft_nat": "NFT_NAT",
    "overlay": "OVERLAY_FS",
    "tun": "TUN",
    "veth": "VETH",
    "vxlan": "VXLAN",
    "wireguard": "WIREGUARD",
    "x_tables": "NETFILTER_XTABLES",
    "xt_MASQUERADE": "NETFILTER_XT_TARGET_MASQUERADE",
    "xt_addrtype": "NETFILTER_XT_MATCH_ADDRTYPE",
    "xt_comment": "NETFILTER_XT_MATCH_COMMENT",
    "xt_conntrack": "NETFILTER_XT_MATCH_CONNTRACK",
    "xt_mark": "NETFILTER_XT_MARK",
    "xt_multiport": "NETFILTER_XT_MATCH_MULTIPORT",
    "xt_physdev": "NETFILTER_XT_MATCH_PHYSDEV",
    "xt_recent": "NETFILTER_XT_MATCH_RECENT",
    "xt_set": "NETFILTER_XT_SET",
    "xt_statistic": "NETFILTER_XT_MATCH_STATISTIC",
}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
PARAM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KO_RE = re.compile(r"\.ko(\.(xz|zst|gz))?$")
PARM_TYPES = r"bool|invbool|byte|short|ushort|int|uint|long|ulong|ullong|hexint|charp|string|array of \w+"
PARM_TYPE_RE = re.compile(rf"\(({PARM_TYPES})\)$")
BARE_TYPE_RE = re.compile(rf"^({PARM_TYPES})$")
INT_RE = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[oO]?[0-7]+|[0-9]+)$")


class KmodError(DataplaneError):
    """Bad input or a refused change; nothing was changed."""


# ---------------------------------------------------------------------------------------------
# parsers: pure functions over the text the kernel and kmod produce
# ---------------------------------------------------------------------------------------------


def normalise(name: str) -> str:
    """The kernel treats '-' and '_' in module names as the same character."""
    return name.replace("-", "_")


def module_name_from_path(path: str) -> str:
    return normalise(KO_RE.sub("", os.path.basename(path.strip())))


@dataclass(frozen=True)
class Loaded:
    """One line of /proc/modules."""

    name: str
    size: int
    refcount: t.Optional[int]
    holders: t.Tuple[str, ...]
    state: str


def parse_proc_modules(text: str) -> t.Dict[str, Loaded]:
    """/proc/modules: ``name size refcount holders,|- state address [taint]``."""
    loaded: t.Dict[str, Loaded] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        holders = tuple(sorted(h for h in fields[3].split(",") if h and h != "-"))
        # refcount is '-' on kernels built without CONFIG_MODULE_UNLOAD
        refcount = int(fields[2]) if fields[2].isdigit() else None
        loaded[fields[0]] = Loaded(fields[0], int(fields[1]), refcount, holders, fields[4])
    return loaded


def parse_modules_dep(text: str) -> t.Dict[str, t.Tuple[str, ...]]:
    """modules.dep: ``path: dep-path dep-path ...`` -> module name -> dependency names."""
    deps: t.Dict[str, t.Tuple[str, ...]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[module_name_from_path(path)] = tuple(module_name_from_path(p) for p in rest.split())
    return deps


def parse_modules_builtin(text: str) -> t.Set[str]:
    """modules.builtin: one ``kernel/.../name.ko`` path per built-in module."""
    return {module_name_from_path(line) for line in text.splitlines() if line.strip()}


def parse_builtin_modinfo(data: bytes) -> t.Dict[str, t.Dict[str, t.Any]]:
    """modules.builtin.modinfo: NUL-separated ``module.key=value`` records.

    Returns module name -> {"params": {name: type}, "aliases": [..]}; a parameter declared
    without a type (MODULE_PARM_DESC only) has the type ''.
    """
    info: t.Dict[str, t.Dict[str, t.Any]] = {}
    for raw in data.split(b"\0"):
        record = raw.decode("utf-8", "replace")
        key, sep, value = record.partition("=")
        mod, dot, field_name = key.partition(".")
        if not sep or not dot:
            continue
        entry = info.setdefault(normalise(mod), {"params": {}, "aliases": []})
        if field_name == "parmtype":
            pname, _sep, ptype = value.partition(":")
            entry["params"][pname] = ptype
        elif field_name == "parm":
            entry["params"].setdefault(value.partition(":")[0], "")
        elif field_name == "alias":
            entry["aliases"].append(value)
    return info


def parse_modinfo(text: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """``modinfo NAME...``: records of ``key: value`` lines (signature lines are indented).

    A loadable module's record starts with ``filename:``, a built-in one's with ``name:``.
    Returns module name -> {"filename": .., "params": {name: type or ''}, "depends": [..]}.
    """
    records: t.List[t.Dict[str, t.Any]] = []
    current: t.Dict[str, t.Any] = {}
    for line in text.splitlines():
        if not line or line[0].isspace():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key in ("filename", "name") and key in current:
            records.append(current)
            current = {}
        if key == "parm":
            pname, _sep, desc = value.partition(":")
            # "name:description (type)", or "name:type" for a parameter without a description
            match = PARM_TYPE_RE.search(desc) or BARE_TYPE_RE.match(desc.strip())
            current.setdefault("params", {})[pname] = match.group(1) if match else ""
        elif key == "depends":
            current["depends"] = [normalise(d) for d in value.split(",") if d]
        elif key in ("filename", "name"):
            current[key] = value
    if current:
        records.append(current)
    out: t.Dict[str, t.Dict[str, t.Any]] = {}
    for rec in records:
        name = rec.get("name") or module_name_from_path(rec.get("filename", ""))
        if name:
            out[normalise(name)] = {
                "filename": rec.get("filename", ""),
                "params": rec.get("params", {}),
                "depends": rec.get("depends", []),
            }
    return out


def parse_dry_run(text: str) -> t.List[t.Tuple[str, str]]:
    """``modprobe -n -v``: ``insmod PATH [params]``, ``builtin NAME``, ``install CMD`` lines.

    Returns (verb, module name or command) in order, without repeats.
    """
    steps: t.List[t.Tuple[str, str]] = []
    for line in text.splitlines():
        verb, _sep, rest = line.strip().partition(" ")
        if verb == "insmod":
            step = ("insmod", module_name_from_path(rest.split()[0]))
        elif verb == "builtin":
            step = ("builtin", normalise(rest.strip()))
        elif verb == "install":
            step = ("install", rest.strip())
        else:
            continue
        if step not in steps:
            steps.append(step)
    return steps


def parse_kconfig(text: str) -> t.Dict[str, str]:
    """A kernel .config: ``CONFIG_X=y|m|value``; ``# CONFIG_X is not set`` -> 'n'."""
    config: t.Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _sep, value = line.partition("=")
            config[key[len("CONFIG_"):]] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[len("# CONFIG_"):-len(" is not set")]] = "n"
    return config


@dataclass
class ModprobeConf:
    """The parts of a modprobe.d(5) file this collection writes."""

    options: t.Dict[str, t.Dict[str, str]] = field(default_factory=dict)
    blacklist: t.Set[str] = field(default_factory=set)
    install: t.Dict[str, str] = field(default_factory=dict)


def parse_modprobe_conf(text: t.Optional[str]) -> ModprobeConf:
    conf = ModprobeConf()
    for line in (text or "").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        cmd, name = words[0], normalise(words[1])
        if cmd == "options":
            opts = conf.options.setdefault(name, {})
            for word in words[2:]:
                key, _sep, value = word.partition("=")
                opts[key] = value
        elif cmd == "blacklist":
            conf.blacklist.add(name)
        elif cmd == "install":
            conf.install[name] = " ".join(words[2:])
    return conf


def header(prefix: str) -> str:
    return (f"# Written by kubenode.dataplane.kernel_module (prefix {prefix}).\n"
            "# This file belongs to the collection and is rewritten by it: change the playbook, not this file.\n")


def render_modules_load(names: t.Iterable[str], prefix: str) -> t.Optional[str]:
    names = sorted(set(names))
    if not names:
        return None
    return header(prefix) + "".join(f"{n}\n" for n in names)


def render_modprobe_conf(conf: ModprobeConf, prefix: str) -> t.Optional[str]:
    lines = []
    for name in sorted(set(conf.options) | conf.blacklist | set(conf.install)):
        if conf.options.get(name):
            lines.append(f"options {name} " + " ".join(f"{k}={v}" for k, v in sorted(conf.options[name].items())))
        if name in conf.blacklist:
            lines.append(f"blacklist {name}")
        if name in conf.install:
            lines.append(f"install {name} {conf.install[name]}")
    if not lines:
        return None
    return header(prefix) + "".join(f"{line}\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# parameter values
# ---------------------------------------------------------------------------------------------


def kstrtobool(value: str) -> t.Optional[bool]:
    """The kernel's reading of a bool parameter (lib/kstrtox.c), None when it is not one."""
    v = value.strip().lower()
    if v[:1] in ("y", "1", "t") or v in ("on",):
        return True
    if v[:1] in ("n", "0", "f") or v in ("off",):
        return False
    return None


def param_text(value: t.Any, where: str) -> str:
    """A parameter value from the play as the string modprobe and the kernel take."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value or any(c.isspace() or c in "\"'#" for c in value):
            raise KmodError(f"{where} must be a non-empty value without spaces, quotes or '#', got {value!r}; {NOTHING}")
        return value
    raise KmodError(f"{where} must be a string, a number or a boolean, got {type(value).__name__}; {NOTHING}")


def same_param(read: t.Optional[str], wanted: str) -> bool:
    """Compare a value read from /sys/module/NAME/parameters with the one asked for.

    None (not readable) compares equal: it cannot be verified and must not cause a reload on
    every run. Bools read back as Y/N, integers in decimal.
    """
    if read is None:
        return True
    read = read.strip()
    if read in ("Y", "N"):
        parsed = kstrtobool(wanted)
        return parsed is not None and parsed == (read == "Y")
    if INT_RE.match(read) and INT_RE.match(wanted):
        try:
            return int(read, 0) == int(wanted, 0)
        except ValueError:
            return read == wanted
    return read == wanted


# ---------------------------------------------------------------------------------------------
# the running kernel, read-only
# ---------------------------------------------------------------------------------------------


class Kernel:
    """Read-only view of the kernel's modules under ``root`` ('/' on a node; a captured tree
    in unit tests). Release-wide files are read once; live state is read on every call."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._cache: t.Dict[str, t.Any] = {}

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _read(self, path: str, binary: bool = False) -> t.Optional[t.Any]:
        try:
            with open(self.path(path), "rb" if binary else "r") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None

    def _cached(self, key: str, make: t.Callable[[], t.Any]) -> t.Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def release(self) -> str:
        if "release" not in self._cache:
            self._cache["release"] = (self._read("/proc/sys/kernel/osrelease") or os.uname().release).strip()
        return self._cache["release"]

    @property
    def modules_dir(self) -> str:
        return f"/lib/modules/{self.release}"

    def can_load(self) -> bool:
        """False on kernels built without CONFIG_MODULES, which have no /proc/modules."""
        return os.path.exists(self.path("/proc/modules"))

    def loaded(self) -> t.Dict[str, Loaded]:
        # read once per converge step (see forget_loaded): a step asks for it a dozen times
        return self._cached("loaded", lambda: parse_proc_modules(self._read("/proc/modules") or ""))

    def forget_loaded(self) -> None:
        self._cache.pop("loaded", None)

    def available(self) -> t.Dict[str, t.Tuple[str, ...]]:
        return self._cached("dep", lambda: parse_modules_dep(self._read(f"{self.modules_dir}/modules.dep") or ""))

    def has_builtin_list(self) -> bool:
        return os.path.exists(self.path(f"{self.modules_dir}/modules.builtin"))

    def builtin_list(self) -> t.Set[str]:
        return self._cached("builtin", lambda: parse_modules_builtin(self._read(f"{self.modules_dir}/modules.builtin") or ""))

    def builtin_modinfo(self) -> t.Dict[str, t.Dict[str, t.Any]]:
        return self._cached("builtin_modinfo", lambda: parse_builtin_modinfo(
            self._read(f"{self.modules_dir}/modules.builtin.modinfo", binary=True) or b""))

    def kconfig(self) -> t.Tuple[t.Dict[str, str], str]:
        def load() -> t.Tuple[t.Dict[str, str], str]:
            raw = self._read("/proc/config.gz", binary=True)
            if raw:
                return parse_kconfig(gzip.decompress(raw).decode("utf-8", "replace")), "/proc/config.gz"
            text = self._read(f"/boot/config-{self.release}")
            if text:
                return parse_kconfig(text), f"/boot/config-{self.release}"
            return {}, ""
        return self._cached("kconfig", load)

    def builtin_source(self, name: str) -> t.Optional[str]:
        """Where the kernel says ``name`` is built in, or None."""
        if name in self.builtin_list():
            return f"{self.modules_dir}/modules.builtin"
        if name in self.builtin_modinfo():
            return f"{self.modules_dir}/modules.builtin.modinfo"
        sysdir = self.path(f"/sys/module/{name}")
        # a loadable module's directory has initstate; a built-in one's never does
        if os.path.isdir(sysdir) and not os.path.exists(os.path.join(sysdir, "initstate")):
            return f"/sys/module/{name}"
        if not self.has_builtin_list() and name in KCONFIG:
            config, source = self.kconfig()
            if config.get(KCONFIG[name]) == "y":
                return f"{source} (CONFIG_{KCONFIG[name]}=y)"
        return None

    def why_missing(self, name: str) -> str:
        if not self.can_load():
            reason = "it is not built in"
            config, source = self.kconfig()
            if name in KCONFIG and config:
                reason += f" (CONFIG_{KCONFIG[name]} is {'not set' if config.get(KCONFIG[name], 'n') == 'n' else config[KCONFIG[name]]} in {source})"
            return reason + " and this kernel cannot load modules (it has no /proc/modules)"
        return f"it is not built in, not in {self.modules_dir}/modules.dep and not an alias modprobe knows"

    def param_names(self, name: str) -> t.Optional[t.Set[str]]:
        """Parameters listed in /sys/module/NAME/parameters, None when there is no such folder."""
        try:
            return set(os.listdir(self.path(f"/sys/module/{name}/parameters")))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def param_values(self, name: str, keys: t.Iterable[str]) -> t.Dict[str, t.Optional[str]]:
        """Values of the given parameters; None for one that is not shown or not readable."""
        values: t.Dict[str, t.Optional[str]] = {}
        for key in keys:
            text = self._read(f"/sys/module/{name}/parameters/{key}")
            values[key] = None if text is None else text.strip()
        return values


# ---------------------------------------------------------------------------------------------
# the request
# ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    where: str  # JSON path of the entry in the task's arguments
    given: str
    state: str
    params: t.Dict[str, str]
    persistent: t.Optional[str]
    reload: bool
    ignore_builtin: bool
    # False when the task gave no params for the module: its persisted options are then kept
    params_given: bool = True
    name: str = ""
    resolved_by: t.Optional[str] = None
    builtin: t.Optional[str] = None  # where the kernel says it is built in

    def settings(self) -> t.Tuple[t.Any, ...]:
        return (self.state, sorted(self.params.items()), self.params_given, self.persistent, self.reload, self.ignore_builtin)


def build_requests(params: t.Dict[str, t.Any]) -> t.List[Request]:
    """Turn the module's arguments into one Request per listed module, defaults applied."""
    top = {k: params.get(k) for k in ("state", "params", "persistent", "reload", "ignore_builtin")}
    entries: t.List[t.Tuple[str, t.Dict[str, t.Any]]] = []
    for i, name in enumerate(params.get("name") or []):
        entries.append((f"name[{i}]", {"name": name}))
    for i, entry in enumerate(params.get("modules") or []):
        entries.append((f"modules[{i}]", dict(entry)))
    if not entries:
        raise KmodError(f"name or modules must list at least one kernel module; {NOTHING}")
    requests = []
    for where, entry in entries:
        name = entry.get("name")
        name_at = where if where.startswith("name[") else f"{where}.name"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise KmodError(f"{name_at} must be a kernel module name (letters, digits, '_', '-'), got {name!r}; {NOTHING}")
        merged = {k: entry[k] if entry.get(k) is not None else top[k] for k in top}
        persistent = merged["persistent"]
        state = merged["state"] or ("absent" if persistent == "disabled" else "present")
        if state == "present" and persistent == "disabled":
            raise KmodError(f"{where}: persistent=disabled blocks {name} from loading, which contradicts state=present; {NOTHING}")
        # the task-wide params are a default for the modules to load, never for those to unload
        raw_params = entry.get("params") if entry.get("params") is not None else (top["params"] if state == "present" else None)
        params_given = raw_params is not None
        raw_params = raw_params or {}
        if not isinstance(raw_params, dict):
            raise KmodError(f"{where}.params must be a dictionary of parameter names to values; {NOTHING}")
        if raw_params and state == "absent":
            raise KmodError(f"{where}.params are given for {name}, which is to be absent; {NOTHING}")
        module_params = {}
        for key, value in raw_params.items():
            if not isinstance(key, str) or not PARAM_RE.match(key):
                raise KmodError(f"{where}.params has an invalid parameter name {key!r}; {NOTHING}")
            module_params[key] = param_text(value, f"{where}.params.{key}")
        requests.append(Request(
            where=where, given=name, state=state, params=module_params, persistent=persistent,
            reload=bool(merged["reload"]), ignore_builtin=bool(merged["ignore_builtin"]), params_given=params_given,
        ))
    return requests


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------


def _loaded_word(rec: t.Dict[str, t.Any]) -> str:
    return {"loaded": "loaded", "builtin": "built in", "absent": "not loaded"}[rec["state"]]


class KmodBackend(Backend):
    """Converge-loop backend of kubenode.dataplane.kernel_module.

    The state compared is {"modules": {name: {"state", "params"}}, "files": {path: text|None}}
    for the modules named in the task and the collection's two files; the desired state also
    carries the "plan" (load/unload/reload, in the order they run).
    """

    def __init__(self, module: t.Any, runner: t.Optional[Runner] = None, root: str = "/") -> None:
        self.module = module
        self.runner = runner or Runner(module)
        self.kernel = Kernel(root)
        self.prefix = module.params.get("prefix") or DEFAULT_PREFIX
        self.requests: t.List[Request] = []
        self.by_name: t.Dict[str, Request] = {}
        self.warnings: t.List[str] = []
        self.also_loaded: t.List[str] = []
        self.last: t.Dict[str, t.Any] = {}
        self._declared: t.Dict[str, t.Dict[str, str]] = {}

    # -- paths ----------------------------------------------------------------------------
    @property
    def modules_load_file(self) -> str:
        return f"{MODULES_LOAD_DIR}/{self.prefix}.conf"

    @property
    def modprobe_file(self) -> str:
        return f"{MODPROBE_DIR}/{self.prefix}.conf"

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)
            self.module.warn(msg)

    def bin(self, name: str) -> str:
        # which() raises ToolMissing rather than return None when the program is required
        return str(self.runner.which(name))

    # -- names ----------------------------------------------------------------------------
    def _prepare(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise KmodError(f"prefix must be a plain file name stem (letters, digits, '.', '_', '-'), got {self.prefix!r}; {NOTHING}")
        self.requests = build_requests(self.module.params)
        missing = []
        for req in self.requests:
            resolved = self._resolve(req.given, req.where)
            if resolved is None:
                if req.state == "absent":
                    req.name = normalise(req.given)
                    self.warn(f"{req.given} ({req.where}) is not a module of kernel {self.kernel.release}; there is nothing to unload")
                    continue
                missing.append(req)
                continue
            req.name, req.resolved_by = resolved
            req.builtin = self.kernel.builtin_source(req.name) if req.name not in self.kernel.loaded() else None
        if missing:
            rel = self.kernel.release
            if len(missing) == 1:
                r = missing[0]
                raise KmodError(f"module {r.given} ({r.where}) is not available on kernel {rel}: "
                                f"{self.kernel.why_missing(normalise(r.given))}; {NOTHING}")
            names = ", ".join(f"{r.given} ({r.where})" for r in missing)
            why = "; ".join(f"{r.given}: {self.kernel.why_missing(normalise(r.given))}" for r in missing)
            raise KmodError(f"modules {names} are not available on kernel {rel}: {why}; {NOTHING}")
        for req in self.requests:
            other = self.by_name.get(req.name)
            if other is None:
                self.by_name[req.name] = req
            elif other.settings() != req.settings():
                raise KmodError(
                    f"{other.where} ({other.given}) and {req.where} ({req.given}) both mean the kernel module {req.name} "
                    f"but ask for different settings; {NOTHING}")

    def _resolve(self, given: str, where: str) -> t.Optional[t.Tuple[str, t.Optional[str]]]:
        name = normalise(given)
        k = self.kernel
        if name in k.loaded() or name in k.available() or k.builtin_source(name):
            return name, None
        if name in RENAMED:
            new, since = RENAMED[name]
            if new in k.loaded() or new in k.available() or k.builtin_source(new):
                return new, f"{name} was merged into {new} in Linux {since}"
        if not k.can_load() or not os.path.isdir(k.path(k.modules_dir)):
            return None
        res = self.runner.run([self.bin("modprobe"), "-R", given], ok_rc=(0, 1), what=f"resolving {where}")
        targets = []
        for word in res.out.split():
            if normalise(word) not in targets:
                targets.append(normalise(word))
        if res.rc != 0 or not targets:
            return None
        if len(targets) > 1:
            raise KmodError(f"{where}: {given} is an alias of several modules ({', '.join(targets)}); name the one you mean; {NOTHING}")
        return targets[0], f"{given} is an alias of {targets[0]}"

    def declared_params(self, names: t.Iterable[str]) -> t.Dict[str, t.Dict[str, str]]:
        """Parameters each module declares (modinfo or modules.builtin.modinfo), one modinfo
        call for all loadable modules not asked before."""
        todo = []
        for name in names:
            if name in self._declared:
                continue
            if name in self.kernel.builtin_modinfo():
                self._declared[name] = dict(self.kernel.builtin_modinfo()[name]["params"])
            elif name in self.kernel.available():
                todo.append(name)
            else:
                self._declared[name] = {}
        if todo:
            res = self.runner.run([self.bin("modinfo")] + todo, what="reading module parameters")
            info = parse_modinfo(res.out)
            for name in todo:
                self._declared[name] = dict(info.get(name, {}).get("params", {}))
        return self._declared

    # -- read ------------------------------------------------------------------------------
    def current(self) -> t.Dict[str, t.Any]:
        self.kernel.forget_loaded()
        if not self.requests:
            self._prepare()
        loaded = self.kernel.loaded()
        modules: t.Dict[str, t.Dict[str, t.Any]] = {}
        for name, req in self.by_name.items():
            if name in loaded:
                keys = sorted(req.params)
                modules[name] = {"state": "loaded", "params": self.kernel.param_values(name, keys)}
            elif self.kernel.builtin_source(name):
                modules[name] = {"state": "builtin", "params": self.kernel.param_values(name, sorted(req.params))}
            else:
                modules[name] = {"state": "absent", "params": {}}
        files = {}
        for path in (self.modules_load_file, self.modprobe_file):
            files[path] = self.kernel._read(path)
        self.last = {"modules": modules, "files": files}
        return self.last

    # -- compute ---------------------------------------------------------------------------
    def _differing(self, name: str, req: Request, cur: t.Dict[str, t.Any]) -> t.List[str]:
        shown = self.kernel.param_names(name) or set()
        unseen = [k for k in req.params if k not in shown]
        if unseen:
            declared = self.declared_params([name]).get(name, {})
            unknown = [k for k in unseen if k not in declared]
            if unknown:
                raise KmodError(
                    f"{req.where}.params: {name} has no parameter {', '.join(unknown)} (it is neither declared by the module "
                    f"nor shown in /sys/module/{name}/parameters); {NOTHING}")
            for k in unseen:
                self.warn(f"{name}.{k} is not shown in /sys/module/{name}/parameters, so its value cannot be compared or verified")
        for k in req.params:
            if k in shown and cur["params"].get(k) is None:
                self.warn(f"/sys/module/{name}/parameters/{k} cannot be read, so its value cannot be compared or verified")
        return [k for k, v in req.params.items() if not same_param(cur["params"].get(k), v)]

    def _holders_error(self, req: Request, verb: str, leaving: t.Set[str]) -> t.Optional[str]:
        info = self.kernel.loaded().get(req.name)
        if info is None:
            return None
        holders = [h for h in info.holders if h not in leaving]
        if holders:
            return f"cannot {verb} {req.name} ({req.where}): it is in use by {', '.join(holders)}"
        if not info.holders and info.refcount:
            return f"cannot {verb} {req.name} ({req.where}): it is in use (reference count {info.refcount}, held by no other module)"
        return None

    def desired(self, before: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        rel = self.kernel.release
        modules: t.Dict[str, t.Dict[str, t.Any]] = {}
        plan: t.Dict[str, t.List[str]] = {"unload": [], "load": [], "reload": []}
        problems: t.List[str] = []
        for name, req in self.by_name.items():
            cur = before["modules"][name]
            after = {"state": cur["state"], "params": dict(cur["params"])}
            if req.state == "present":
                if cur["state"] == "absent":
                    after = {"state": "loaded", "params": dict(req.params)}
                    plan["load"].append(name)
                elif req.params:
                    differing = self._differing(name, req, cur)
                    changes = ", ".join(f"{k}={cur['params'].get(k)} to {k}={req.params[k]}" for k in differing)
                    if differing and cur["state"] == "builtin":
                        wanted = " ".join(f"{name}.{k}={req.params[k]}" for k in differing)
                        problems.append(f"{name} ({req.where}) is built into kernel {rel}, so changing {changes} "
                                        f"is only possible on the kernel command line ({wanted})")
                    elif differing and not req.reload:
                        problems.append(f"{name} ({req.where}) is loaded and changing {changes} needs a reload; "
                                        "set reload=true to unload and load it again")
                    elif differing:
                        plan["reload"].append(name)
                        after = {"state": "loaded", "params": dict(req.params)}
            elif cur["state"] == "builtin":
                if req.ignore_builtin:
                    self.warn(f"{name} ({req.where}) is built into kernel {rel} and stays; ignored as ignore_builtin=true asks")
                else:
                    problems.append(f"{name} ({req.where}) is built into kernel {rel} and cannot be unloaded "
                                    "(set ignore_builtin=true to accept that)")
            elif cur["state"] == "loaded":
                plan["unload"].append(name)
                after = {"state": "absent", "params": {}}
            modules[name] = after
        leaving = set(plan["unload"]) | set(plan["reload"])
        for name in plan["unload"] + plan["reload"]:
            err = self._holders_error(self.by_name[name], "unload" if name in plan["unload"] else "reload", leaving)
            if err:
                problems.append(err)
        files = self._files(before["files"])
        blocked = parse_modprobe_conf(files[self.modprobe_file]).install
        for name in plan["load"] + plan["reload"]:
            if blocked.get(name) == BLOCK_COMMAND:
                req = self.by_name[name]
                problems.append(f"{name} ({req.where}) is blocked by an earlier persistent=disabled in {self.modprobe_file}; "
                                "set persistent to present or absent to load it")
        if problems:
            raise KmodError("; ".join(problems) + f"; {NOTHING}")
        plan["unload"] = self._unload_order(plan["unload"] + plan["reload"])
        plan["load"] = self._load_order(plan["load"] + plan["reload"])
        return {"modules": modules, "files": files, "plan": plan}

    def _unload_order(self, names: t.List[str]) -> t.List[str]:
        """Holders before the modules they hold."""
        loaded = self.kernel.loaded()
        left = list(dict.fromkeys(names))
        order: t.List[str] = []
        while left:
            ready = [n for n in left if not any(h in left for h in loaded[n].holders)]
            if not ready:  # a cycle cannot happen in the kernel; keep going rather than spin
                ready = left[:1]
            for n in ready:
                order.append(n)
                left.remove(n)
        return order

    def _load_order(self, names: t.List[str]) -> t.List[str]:
        """The order apply() loads in: modules with parameters one by one, dependencies first, so
        that none is pulled in without its parameters; then the rest with one modprobe -a, in the
        order given (modprobe orders their dependencies itself)."""
        left = [n for n in dict.fromkeys(names) if self.by_name[n].params]
        if not left:
            return list(dict.fromkeys(names))
        deps = self.kernel.available()
        order: t.List[str] = []
        while left:
            ready = [n for n in left if not any(d in left for d in deps.get(n, ()))] or left[:1]
            for n in ready:
                order.append(n)
                left.remove(n)
        return order + [n for n in dict.fromkeys(names) if not self.by_name[n].params]

    def _files(self, files: t.Dict[str, t.Optional[str]]) -> t.Dict[str, t.Optional[str]]:
        ml_text, mp_text = files[self.modules_load_file], files[self.modprobe_file]
        names = parse_modules_load(ml_text)
        conf = parse_modprobe_conf(mp_text)
        before_model = (sorted(names), conf)
        names, conf = list(names), parse_modprobe_conf(mp_text)
        for name, req in self.by_name.items():
            if req.persistent is None:
                continue
            if req.persistent == "present" and name not in names:
                names.append(name)
            if req.persistent != "present" and name in names:
                names.remove(name)
            if req.persistent != "present" or req.params_given:
                conf.options.pop(name, None)
            if req.persistent == "present" and req.params:
                conf.options[name] = dict(req.params)
            if req.persistent == "disabled":
                conf.blacklist.add(name)
                conf.install[name] = BLOCK_COMMAND
            else:
                conf.blacklist.discard(name)
                conf.install.pop(name, None)
        out = dict(files)
        if sorted(names) != before_model[0]:
            out[self.modules_load_file] = render_modules_load(names, self.prefix)
        if conf != before_model[1]:
            out[self.modprobe_file] = render_modprobe_conf(conf, self.prefix)
        return out

    def equal(self, actual: t.Dict[str, t.Any], wanted: t.Dict[str, t.Any]) -> bool:
        if actual["files"] != wanted["files"]:
            return False
        for name, want in wanted["modules"].items():
            have = actual["modules"][name]
            if have["state"] != want["state"]:
                return False
            if any(not same_param(have["params"].get(k), v) for k, v in want["params"].items()):
                return False
        return True

    # -- dry run ---------------------------------------------------------------------------
    def validate(self, after: t.Dict[str, t.Any]) -> None:
        plan = after["plan"]
        fresh = [n for n in plan["load"] if n not in plan["reload"]]
        if fresh:
            res = self.runner.run([self.bin("modprobe"), "-n", "-v", "-a"] + fresh, what="dry run of the module loads")
            inserted = [arg for verb, arg in parse_dry_run(res.out) if verb == "insmod"]
            self.also_loaded = [n for n in inserted if n not in self.by_name and n not in self.kernel.loaded()]
        # parameters of a loaded module were checked against /sys/module in desired(); the
        # others are checked against what the module declares
        unseen = {n: [k for k in self.by_name[n].params if k not in (self.kernel.param_names(n) or set())]
                  for n in plan["load"] if n not in plan["reload"]}
        unseen = {n: keys for n, keys in unseen.items() if keys}
        if unseen:
            declared = self.declared_params(list(unseen))
            for name, keys in unseen.items():
                for k in keys:
                    if k not in declared.get(name, {}):
                        # module_param_call() parameters such as nf_conntrack's hashsize are not in modinfo
                        self.warn(f"{name} does not declare the parameter {k} in modinfo; it is checked in "
                                  f"/sys/module/{name}/parameters once loaded")

    # -- apply -----------------------------------------------------------------------------
    def apply(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any]) -> None:
        plan = after["plan"]
        done: t.List[str] = []
        try:
            if plan["unload"]:
                self.runner.run([self.bin("rmmod")] + plan["unload"], what="unloading modules")
                done.append("unloaded " + ", ".join(plan["unload"]))
            for path in (self.modules_load_file, self.modprobe_file):
                if after["files"][path] != before["files"][path]:
                    self._write(path, after["files"][path])
                    done.append(("removed " if after["files"][path] is None else "wrote ") + path)
            batch = []
            for name in plan["load"]:
                params = self.by_name[name].params
                if params:
                    argv = [self.bin("modprobe"), name] + [f"{k}={v}" for k, v in sorted(params.items())]
                    self.runner.run(argv, what=f"loading {name}")
                    done.append(f"loaded {name}")
                else:
                    batch.append(name)
            if batch:
                self.runner.run([self.bin("modprobe"), "-a"] + batch, what="loading modules")
                done.append("loaded " + ", ".join(batch))
        except DataplaneError as exc:
            already = "; ".join(done) if done else "nothing"
            raise DataplaneError(f"{exc}; done before the failure: {already}") from exc
        for name in plan["load"]:
            shown = self.kernel.param_names(name) or set()
            declared = self._declared.get(name, {})
            ignored = [k for k in self.by_name[name].params if k not in shown and k not in declared]
            if ignored:
                raise DataplaneError(
                    f"{self.by_name[name].where}.params: {name} has no parameter {', '.join(ignored)}: the kernel loaded "
                    f"it and ignored the parameter; done: {'; '.join(done)}")

    def _write(self, path: str, text: t.Optional[str]) -> None:
        real = self.kernel.path(path)
        if text is None:
            if os.path.exists(real):
                os.unlink(real)
            return
        folder = os.path.dirname(real)
        os.makedirs(folder, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.prefix}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            self.module.atomic_move(tmp, real)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        os.chmod(real, 0o644)

    # -- report ----------------------------------------------------------------------------
    def render(self, state: t.Dict[str, t.Any]) -> str:
        plan = state.get("plan", {})
        action = {}
        for verb in ("unload", "load"):
            for name in plan.get(verb, []):
                action[name] = verb
        for name in plan.get("reload", []):
            action[name] = "reload"
        lines = [f"# kernel {self.kernel.release}"]
        for name in sorted(state["modules"]):
            rec = state["modules"][name]
            params = " ".join(f"{k}={'(unreadable)' if v is None else v}" for k, v in sorted(rec["params"].items()))
            line = f"{name}: {_loaded_word(rec)}" + (f" {params}" if params else "")
            if name in action:
                line += f"  # {action[name]}"
            lines.append(line)
        if self.also_loaded and plan:
            lines.append(f"# modprobe -n also inserts: {', '.join(self.also_loaded)}")
        for path, text in state["files"].items():
            lines.append(f"# {path}")
            lines.append(text.rstrip("\n") if text is not None else "(no file)")
        return "\n".join(lines) + "\n"

    def result(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any], changed: bool) -> t.Dict[str, t.Any]:
        plan = after["plan"]
        final_files = after["files"]
        per_module = []
        for req in self.requests:
            name = req.name
            b = before["modules"].get(name, {"state": "absent", "params": {}})
            a = after["modules"].get(name, b)
            read = self.last.get("modules", {}).get(name, {}).get("params", {})
            params = {k: (read.get(k) if read.get(k) is not None else v) for k, v in req.params.items()} if a["state"] != "absent" else {}
            if name in plan["reload"]:
                action = "reload"
            elif name in plan["load"]:
                action = "load"
            elif name in plan["unload"]:
                action = "unload"
            else:
                action = "none"
            mentioned = [p for p, text in final_files.items() if text and self._mentions(p, text, name)]
            per_module.append({
                "name": req.given,
                "resolved": name,
                "resolved_by": req.resolved_by,
                "state": req.state,
                "before": b["state"],
                "after": a["state"],
                "builtin": b["state"] == "builtin",
                "builtin_source": req.builtin,
                "params": params,
                "persistent": req.persistent,
                "files": mentioned,
                "action": action,
            })
        return {
            "kernel": self.kernel.release,
            "modules": per_module,
            "plan": {
                "unload": list(plan["unload"]),
                "load": list(plan["load"]),
                "reload": list(plan["reload"]),
                "dependencies": list(self.also_loaded),
            },
            "files": {"modules_load": self.modules_load_file, "modprobe": self.modprobe_file},
        }

    def _mentions(self, path: str, text: str, name: str) -> bool:
        if path == self.modules_load_file:
            return name in parse_modules_load(text)
        conf = parse_modprobe_conf(text)
        return name in conf.options or name in conf.blacklist or name in conf.install
