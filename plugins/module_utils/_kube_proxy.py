# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kube-proxy's configuration: find the KubeProxyConfiguration, merge settings, validate, write.

Three places hold the document: a file on a node (a plain kube-proxy config, or one document
of a multi-document kubeadm config), text given by the caller, and the ConfigMap
kube-system/kube-proxy (key config.conf) of a kubeadm cluster. All three go through the same
converge loop: read, merge the requested settings over what is there, validate the whole
result against the schema of the type (plus the semantic checks kube-proxy itself makes),
change only the lines of the values that differ, write atomically (a file through
atomic_move, the ConfigMap through a PUT guarded by its resourceVersion), read back.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import time
import typing as t
from dataclasses import dataclass, field

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_YAML = False

from ansible_collections.kubenode.dataplane.plugins.module_utils import _schema
from ansible_collections.kubenode.dataplane.plugins.module_utils import _yamledit
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend
from ansible_collections.kubenode.dataplane.plugins.module_utils._kube_proxy_node import IPVS_DEPRECATION
from ansible_collections.kubenode.dataplane.plugins.module_utils._kubeapi import Conflict, KubeApiError, NotFound, Unreachable
from ansible_collections.kubenode.dataplane.plugins.module_utils._kube_proxy_schema import (
    API_VERSION,
    KIND,
    SCHEMA,
)
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError

KUBEADM_GROUP = "kubeadm.k8s.io/"
DEFAULT_METRICS_PORT = 10249

# Module option (snake_case) -> field of the type (camelCase), per section.
SECTION_FIELDS: t.Dict[str, t.Dict[str, str]] = {
    "ipvs": {
        "scheduler": "scheduler",
        "strict_arp": "strictARP",
        "exclude_cidrs": "excludeCIDRs",
        "tcp_timeout": "tcpTimeout",
        "tcp_fin_timeout": "tcpFinTimeout",
        "udp_timeout": "udpTimeout",
        "sync_period": "syncPeriod",
        "min_sync_period": "minSyncPeriod",
    },
    "iptables": {
        "masquerade_bit": "masqueradeBit",
        "masquerade_all": "masqueradeAll",
        "sync_period": "syncPeriod",
        "min_sync_period": "minSyncPeriod",
    },
    "nftables": {
        "masquerade_bit": "masqueradeBit",
        "masquerade_all": "masqueradeAll",
        "sync_period": "syncPeriod",
        "min_sync_period": "minSyncPeriod",
    },
    "conntrack": {
        "max_per_core": "maxPerCore",
        "min": "min",
        "tcp_established_timeout": "tcpEstablishedTimeout",
        "tcp_close_wait_timeout": "tcpCloseWaitTimeout",
        "tcp_be_liberal": "tcpBeLiberal",
        "udp_timeout": "udpTimeout",
        "udp_stream_timeout": "udpStreamTimeout",
    },
}
TOP_FIELDS = {
    "mode": "mode",
    "cluster_cidr": "clusterCIDR",
    "node_port_addresses": "nodePortAddresses",
    "metrics_bind_address": "metricsBindAddress",
}
_OPTION_TYPES = {
    "strict_arp": "bool", "masquerade_all": "bool", "tcp_be_liberal": "bool",
    "masquerade_bit": "int", "max_per_core": "int", "min": "int",
    "exclude_cidrs": "list",
}


def _suboptions(section: str) -> dict:
    spec = {}
    for option in SECTION_FIELDS[section]:
        kind = _OPTION_TYPES.get(option, "str")
        spec[option] = {"type": kind}
        if kind == "list":
            spec[option]["elements"] = "str"
    if section == "ipvs":
        spec["scheduler"]["choices"] = [s for s in SCHEMA["properties"]["ipvs"]["properties"]["scheduler"]["enum"] if s is not None]
    return spec


# The settings part of the module's argument spec: shared with the action plugin, which
# checks the same options on the controller before anything is sent to a host.
SETTINGS_SPEC: t.Dict[str, dict] = {
    "mode": {"type": "str", "choices": ["", "iptables", "ipvs", "nftables"]},
    "ipvs": {"type": "dict", "options": _suboptions("ipvs")},
    "iptables": {"type": "dict", "options": _suboptions("iptables")},
    "nftables": {"type": "dict", "options": _suboptions("nftables")},
    "conntrack": {"type": "dict", "options": _suboptions("conntrack")},
    "cluster_cidr": {"type": "str"},
    "node_port_addresses": {"type": "list", "elements": "str"},
    "metrics_bind_address": {"type": "str"},
    "settings": {"type": "dict", "default": {}},
}


class ConfigError(DataplaneError):
    """The document, or what was asked of it, is not a valid KubeProxyConfiguration."""

    def __init__(self, message: str, errors: t.Optional[t.List[t.Tuple[str, str]]] = None) -> None:
        super().__init__(message)
        self.details = {"errors": [{"path": p, "message": m} for p, m in (errors or [])]}


# ---------------------------------------------------------------------------------------------
# settings: module parameters -> the part of the document they set


def overlay(params: t.Mapping[str, t.Any]) -> dict:
    """The requested settings as a partial KubeProxyConfiguration (upstream field names).

    ``settings`` (raw, upstream names) comes first; the named options win over it.
    """
    out = deep_merge({}, params.get("settings") or {})
    for option, name in TOP_FIELDS.items():
        if params.get(option) is not None:
            out[name] = params[option]
    for section, fields in SECTION_FIELDS.items():
        given = params.get(section) or {}
        for option, name in fields.items():
            if given.get(option) is not None:
                out.setdefault(section, {})
                if not isinstance(out[section], dict):
                    out[section] = {}
                out[section][name] = given[option]
    return out


def deep_merge(base: t.Any, extra: t.Any) -> t.Any:
    """Mappings merge key by key; anything else in ``extra`` replaces what ``base`` has."""
    if not isinstance(base, dict) or not isinstance(extra, dict):
        return _copy(extra)
    out = {k: _copy(v) for k, v in base.items()}
    for key, value in extra.items():
        out[key] = deep_merge(out.get(key), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else _copy(value)
    return out


def _copy(value: t.Any) -> t.Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


_MISSING = object()


def leaf_changes(before: t.Any, extra: t.Any, path: t.Tuple[str, ...] = ()) -> t.List[t.Tuple[t.Tuple[str, ...], t.Any]]:
    """(path, value) of every leaf of ``extra`` whose value differs from ``before``."""
    if not path and extra == {}:
        return []  # no settings asked for: nothing to change (below the top, {} is a value to set)
    if isinstance(extra, dict) and extra:
        found = []
        for key, value in extra.items():
            below = before.get(key, _MISSING) if isinstance(before, dict) else _MISSING
            found.extend(leaf_changes(below, value, path + (key,)))
        return found
    if before is _MISSING or not _json_equal(before, extra):
        return [(path, extra)]
    return []


def _json_equal(a: t.Any, b: t.Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return a == b


def changed_paths(before: t.Any, after: t.Any, path: t.Tuple[t.Union[str, int], ...] = ()) -> t.List[str]:
    """JSON paths of everything that differs between two documents."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: t.List[str] = []
        for key in list(before) + [k for k in after if k not in before]:
            if key not in after or key not in before:
                found.append(_schema.json_path(path + (key,)))
            else:
                found.extend(changed_paths(before[key], after[key], path + (key,)))
        return found
    return [] if _json_equal(before, after) else [_schema.json_path(path)]


# ---------------------------------------------------------------------------------------------
# validation


def _durations_ns(text: t.Any) -> t.Optional[float]:
    if not isinstance(text, str) or not re.search(SCHEMA["definitions"]["duration"]["pattern"], text):
        return None
    units = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
    sign = -1 if text.startswith("-") else 1
    total = sum(float(num) * units[unit] for num, unit in re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)", text))
    return sign * total


def _cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return "/" in text


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> t.Tuple[str, t.Optional[int]]:
    """'1.2.3.4:10249', '[::1]:10249', '1.2.3.4' -> (host, port or None); ValueError if malformed."""
    match = re.match(r"^\[([0-9a-fA-F:.%]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if match:
        host, port = match.group(1), int(match.group(2))
        if not _ip(host) or not 0 < port < 65536:
            raise ValueError(text)
        return host, port
    if _ip(text):
        return text, None
    raise ValueError(text)


def semantic_errors(data: dict) -> t.List[t.Tuple[str, str]]:
    """The checks kube-proxy's own validation makes that a JSON Schema cannot express."""
    found: t.List[t.Tuple[str, str]] = []
    cidr = data.get("clusterCIDR")
    if isinstance(cidr, str) and cidr:
        parts = cidr.split(",")
        if len(parts) > 2 or not all(_cidr(p) for p in parts):
            found.append(("$.clusterCIDR", f"{cidr!r} is not a CIDR or a comma-separated IPv4,IPv6 pair of CIDRs"))
        elif len(parts) == 2 and {ipaddress.ip_network(p.strip(), strict=False).version for p in parts} != {4, 6}:
            found.append(("$.clusterCIDR", f"{cidr!r} has two CIDRs of the same IP family"))
    for index, item in enumerate(data.get("nodePortAddresses") or []):
        if isinstance(item, str) and item not in ("primary", "localhost", "all") and not _cidr(item):
            found.append((f"$.nodePortAddresses[{index}]", f"{item!r} is not a CIDR nor one of 'primary', 'localhost', 'all'"))
    ipvs = data.get("ipvs") if isinstance(data.get("ipvs"), dict) else {}
    for index, item in enumerate(ipvs.get("excludeCIDRs") or []):
        if isinstance(item, str) and not _cidr(item):
            found.append((f"$.ipvs.excludeCIDRs[{index}]", f"{item!r} is not a CIDR"))
    bind = data.get("bindAddress")
    if isinstance(bind, str) and bind and not _ip(bind):
        found.append(("$.bindAddress", f"{bind!r} is not an IP address"))
    for name in ("metricsBindAddress", "healthzBindAddress"):
        value = data.get(name)
        if isinstance(value, str) and value:
            try:
                split_host_port(value)
            except ValueError:
                found.append((f"$.{name}", f"{value!r} is not IP:port (for example 127.0.0.1:10249 or [::1]:10249)"))
    for section in ("iptables", "ipvs", "nftables"):
        block = data.get(section)
        if not isinstance(block, dict):
            continue
        sync, minimum = _durations_ns(block.get("syncPeriod")), _durations_ns(block.get("minSyncPeriod"))
        if sync and minimum and minimum > sync:
            found.append((f"$.{section}.minSyncPeriod", f"{block['minSyncPeriod']!r} is longer than syncPeriod {block['syncPeriod']!r}"))
    return found


def check(data: t.Any) -> t.List[t.Tuple[str, str]]:
    errors = _schema.validate(SCHEMA, data)
    if not errors and isinstance(data, dict):
        errors = semantic_errors(data)
    return errors


def errors_sentence(lead: str, errors: t.List[t.Tuple[str, str]], untouched: str) -> str:
    listed = "; ".join(f"{path}: {message}" for path, message in errors[:8])
    more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
    return f"{lead}: {listed}{more}; {untouched}"


# ---------------------------------------------------------------------------------------------
# the text: one or more YAML documents, one of which is the KubeProxyConfiguration


@dataclass
class Parsed:
    text: str
    docs: t.List[t.Any]
    index: t.Optional[int]  # the KubeProxyConfiguration's document, None when it is to be appended

    @property
    def data(self) -> dict:
        return self.docs[self.index] if self.index is not None else {}


def _describe(doc: t.Any) -> str:
    if isinstance(doc, dict) and ("kind" in doc or "apiVersion" in doc):
        return f"{doc.get('kind', '?')} ({doc.get('apiVersion', '?')})"
    return "a document without apiVersion/kind" if isinstance(doc, dict) else f"a YAML {type(doc).__name__}"


def parse(text: str, where: str, untouched: str, allow_append: bool) -> Parsed:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({str(exc).splitlines()[0]}); {untouched}") from None
    found = [i for i, d in enumerate(docs) if isinstance(d, dict) and d.get("kind") == KIND]
    if len(found) > 1:
        raise ConfigError(f"{where} holds {len(found)} KubeProxyConfiguration documents, which one to change is ambiguous; {untouched}")
    if found:
        doc = docs[found[0]]
        if doc.get("apiVersion") != API_VERSION:
            raise ConfigError(
                f"{where}: $.apiVersion is {doc.get('apiVersion')!r}, this module handles {API_VERSION} only; {untouched}",
                [("$.apiVersion", f"{doc.get('apiVersion')!r} is not {API_VERSION!r}")],
            )
        return Parsed(text, docs, found[0])
    kubeadm = any(isinstance(d, dict) and str(d.get("apiVersion", "")).startswith(KUBEADM_GROUP) for d in docs)
    if kubeadm and allow_append:
        return Parsed(text, docs, None)
    real = [d for d in docs if d is not None]
    what = ", ".join(_describe(d) for d in real) if real else "nothing (the text is empty)"
    raise ConfigError(
        f"{where} is not a KubeProxyConfiguration ({API_VERSION}): it holds {what}; {untouched}",
        [("$.kind", f"expected {KIND!r}")],
    )


def rewrite(parsed: Parsed, extra: dict) -> t.Tuple[str, dict]:
    """The new text and the new document: ``extra`` merged in, every other byte kept."""
    if parsed.index is None:
        merged = deep_merge({"apiVersion": API_VERSION, "kind": KIND}, extra)
        text = parsed.text
        if text and not text.endswith("\n"):
            text += "\n"
        sep = "---\n" if text.strip() else ""
        return text + sep + _yamledit.render_document(merged), merged
    merged = deep_merge(parsed.data, extra)
    text = parsed.text
    for path, value in leaf_changes(parsed.data, extra):
        text = _yamledit.set_value(text, parsed.index, list(path), value)
    if text != parsed.text:
        again = list(yaml.safe_load_all(text))
        others_same = len(again) == len(parsed.docs) and all(
            _json_equal(a, b) for i, (a, b) in enumerate(zip(again, parsed.docs)) if i != parsed.index)
        if not others_same or not _json_equal(again[parsed.index], merged):
            raise _yamledit.EditError(
                "internal error: changing the values in place would not give the merged document; nothing was written")
    return text, merged


# ---------------------------------------------------------------------------------------------
# modes and where kube-proxy says which one it runs


def effective_mode(data: t.Mapping[str, t.Any]) -> str:
    """The mode kube-proxy runs on Linux for this configuration ('' means iptables)."""
    return data.get("mode") or "iptables"


def proxy_mode_url(data: t.Mapping[str, t.Any]) -> str:
    """Where /proxyMode answers on the node itself, from metricsBindAddress (and bindAddress)."""
    bind = str(data.get("bindAddress") or "")
    ipv6 = _ip(bind) and ipaddress.ip_address(bind).version == 6
    address = str(data.get("metricsBindAddress") or "")
    if not address:
        host, port = ("::1" if ipv6 else "127.0.0.1"), DEFAULT_METRICS_PORT
    else:
        host, maybe_port = split_host_port(address)
        port = maybe_port or DEFAULT_METRICS_PORT
        if host == "0.0.0.0":
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/proxyMode"


# ---------------------------------------------------------------------------------------------
# the converge backend


@dataclass
class State:
    text: str
    parsed: t.Optional[Parsed] = None
    merged: t.Optional[dict] = None
    exists: bool = True
    meta: dict = field(default_factory=dict)


class Source:
    """Where the document lives. ``read`` returns a State; ``write`` stores one."""

    where = "the configuration"
    untouched = "nothing was written"
    allow_append = False

    def read(self) -> State:
        raise NotImplementedError

    def write(self, before: State, after: State, remerge: t.Callable[[State], State]) -> t.Optional[State]:
        raise NotImplementedError

    def result(self) -> dict:
        return {}


class ContentSource(Source):
    def __init__(self, text: str) -> None:
        self.text = text
        self.where = "the given content"
        self.untouched = "nothing was changed"

    def read(self) -> State:
        return State(self.text)

    def write(self, before: State, after: State, remerge: t.Callable[[State], State]) -> t.Optional[State]:
        self.text = after.text
        return None


class FileSource(Source):
    def __init__(self, module: t.Any, path: str, create: bool, backup: bool) -> None:
        self.module = module
        self.path = path
        self.create = create
        self.backup = backup
        self.backup_file: t.Optional[str] = None
        self.where = path
        self.untouched = f"{path} was left as it was"
        self.allow_append = True

    def read(self) -> State:
        if os.path.isdir(self.path):
            raise ConfigError(f"{self.path} is a directory, not a configuration file; nothing was written")
        if not os.path.exists(self.path):
            if not self.create:
                raise ConfigError(f"{self.path} does not exist; set create=true to write a new KubeProxyConfiguration there")
            return State("", exists=False)
        with open(self.path, "rb") as handle:
            raw = handle.read()
        try:
            return State(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path} is not UTF-8 text; {self.untouched}") from None

    def write(self, before: State, after: State, remerge: t.Callable[[State], State]) -> t.Optional[State]:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigError(f"the directory {directory} does not exist; nothing was written")
        if self.backup and before.exists:
            self.backup_file = self.module.backup_local(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".kube-proxy-config.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(after.text.encode("utf-8"))
            if not before.exists:
                os.chmod(tmp, 0o644)
            self.module.atomic_move(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return None

    def result(self) -> dict:
        # not "path": AnsibleModule would add the file's owner and mode to the result under that key
        out: dict = {"file": self.path}
        if self.backup_file:
            out["backup_file"] = self.backup_file
        return out


class ConfigMapSource(Source):
    """The ConfigMap kubeadm keeps kube-proxy's configuration in, written with optimistic concurrency.

    The PUT carries the resourceVersion that was read, so a concurrent change (kubectl edit,
    another play) makes the API server answer 409 instead of being overwritten; the settings
    are then merged again over the newer version and the PUT retried.
    """

    def __init__(self, client: t.Any, namespace: str, name: str, key: str, retries: int) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.key = key
        self.retries = retries
        self.conflicts = 0
        self.resource_version = ""
        self.written = False
        self.where = f"ConfigMap {namespace}/{name} key {key}"
        self.untouched = f"the ConfigMap {namespace}/{name} was not changed"

    @property
    def api_path(self) -> str:
        return self.client.configmap_path(self.namespace, self.name)

    def read(self) -> State:
        try:
            obj = self.client.request("GET", self.api_path)
        except NotFound:
            raise ConfigError(f"there is no ConfigMap {self.namespace}/{self.name} on the cluster (is kube-proxy deployed by kubeadm?); "
                              "nothing was changed") from None
        except KubeApiError as exc:
            if self.written:
                # the re-read that verifies the write
                raise ConfigError(f"the ConfigMap {self.namespace}/{self.name} was changed (resourceVersion "
                                  f"{self.resource_version}) but could not be read back to verify it: {exc}") from None
            raise ConfigError(f"{exc}; {self.untouched}") from None
        data = obj.get("data") or {}
        if self.key not in data:
            raise ConfigError(f"the ConfigMap {self.namespace}/{self.name} has no key {self.key!r} (it has {sorted(data)}); "
                              "nothing was changed")
        self.resource_version = obj.get("metadata", {}).get("resourceVersion", "")
        return State(data[self.key], meta={"object": obj})

    def write(self, before: State, after: State, remerge: t.Callable[[State], State]) -> t.Optional[State]:
        final: t.Optional[State] = None
        while True:
            obj = _copy(before.meta["object"])
            obj.setdefault("data", {})[self.key] = after.text
            try:
                written = self.client.request("PUT", self.api_path, obj)
            except Unreachable as exc:
                if exc.sent:
                    raise ConfigError(f"{exc}; the PUT of the ConfigMap {self.namespace}/{self.name} may or may not "
                                      "have been applied (run again: the merge finds what is there)") from None
                raise ConfigError(f"{exc}; {self.untouched}") from None
            except Conflict:
                self.conflicts += 1
                if self.conflicts > self.retries:
                    raise ConfigError(
                        f"the ConfigMap {self.namespace}/{self.name} kept changing under us ({self.conflicts} conflicts "
                        f"in a row); it was left as the other writer made it") from None
                before = self.read()
                after = final = remerge(before)
                if after.text == before.text:
                    # the other writer already made the same change
                    return final
                continue
            self.resource_version = written.get("metadata", {}).get("resourceVersion", "")
            self.written = True
            return final

    def result(self) -> dict:
        return {
            "configmap": {"namespace": self.namespace, "name": self.name, "key": self.key,
                          "resource_version": self.resource_version},
            "conflicts": self.conflicts,
        }


class ConfigBackend(Backend):
    def __init__(self, source: Source, extra: dict, warn: t.Callable[[str], None]) -> None:
        self.source = source
        self.extra = extra
        self.warn = warn

    def _parse(self, state: State) -> State:
        if state.parsed is None:
            if not state.exists:
                # a file to create: the new document is "appended" to nothing
                state.parsed = Parsed("", [], None)
            else:
                state.parsed = parse(state.text, self.source.where, self.source.untouched, self.source.allow_append)
            state.merged = state.parsed.data
        return state

    def current(self) -> State:
        return self._parse(self.source.read())

    def desired(self, before: State) -> State:
        parsed = self._parse(before).parsed
        if parsed is None:  # pragma: no cover - _parse always sets it
            raise ConfigError("internal error: the document was not parsed")
        text, merged = rewrite(parsed, self.extra)
        errors = check(merged)
        if errors:
            lead = f"the result would not be a valid KubeProxyConfiguration ({self.source.where})"
            raise ConfigError(errors_sentence(lead, errors, self.source.untouched), errors)
        index = parsed.index if parsed.index is not None else len(list(yaml.safe_load_all(text))) - 1
        return State(text, None, merged, True, dict(before.meta, document_index=index))

    def equal(self, actual: State, wanted: State) -> bool:
        return actual.exists == wanted.exists and actual.text == wanted.text

    def apply(self, before: State, after: State) -> t.Optional[State]:
        return self.source.write(before, after, lambda fresh: self.desired(self._parse(fresh)))

    def render(self, state: State) -> str:
        return state.text

    def result(self, before: State, after: State, changed: bool) -> dict:
        old = before.merged or {}
        new = after.merged or {}
        out = {
            "config": new,
            "content": after.text,
            "proxy_mode": new.get("mode") or "",
            "effective_mode": effective_mode(new),
            "previous_proxy_mode": old.get("mode") or "",
            "previous_effective_mode": effective_mode(old),
            "changes": changed_paths(old, new) if before.exists else ["$"],
            "created": not before.exists,
            "proxy_mode_url": proxy_mode_url(new),
            "document_index": after.meta.get("document_index", 0),
        }
        out.update(self.source.result())
        if effective_mode(new) == "ipvs":
            self.warn(IPVS_DEPRECATION)
        return out


# ---------------------------------------------------------------------------------------------
# the DaemonSet: rolling restart and the wait for it, as `kubectl rollout restart/status` do

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def rollout_progress(ds: dict) -> t.Tuple[bool, str]:
    """(done, what is awaited), with the rules of kubectl's DaemonSet status viewer."""
    meta, st = ds.get("metadata", {}), ds.get("status", {})
    desired = int(st.get("desiredNumberScheduled") or 0)
    updated = int(st.get("updatedNumberScheduled") or 0)
    available = int(st.get("numberAvailable") or 0)
    if int(st.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False, "the DaemonSet controller has not yet seen the new pod template"
    if updated < desired:
        return False, f"{updated} of {desired} pods updated"
    if available < desired:
        return False, f"{available} of {desired} updated pods available"
    return True, f"{desired} of {desired} pods updated and available"


def daemonset_status(ds: dict) -> dict:
    st = ds.get("status", {})
    annotations = ds.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
    return {
        "generation": int(ds.get("metadata", {}).get("generation") or 0),
        "observed_generation": int(st.get("observedGeneration") or 0),
        "desired": int(st.get("desiredNumberScheduled") or 0),
        "updated": int(st.get("updatedNumberScheduled") or 0),
        "available": int(st.get("numberAvailable") or 0),
        "restarted_at": annotations.get(RESTARTED_AT),
    }


def rollout(client: t.Any, namespace: str, name: str, *, restart: bool, wait: bool, timeout: float, interval: float,
            check_mode: bool, clock: t.Any = None, stamp: t.Optional[str] = None) -> dict:
    """Restart the DaemonSet's pods (rolling, by a pod-template annotation) and wait for the rollout."""
    clock = clock or time
    path = client.daemonset_path(namespace, name)
    what_not = "was not restarted" if restart else "could not be read"
    try:
        ds = client.request("GET", path)
    except NotFound:
        raise DataplaneError(f"there is no DaemonSet {namespace}/{name} on the cluster; nothing was changed") from None
    except KubeApiError as exc:
        raise DataplaneError(f"the DaemonSet {namespace}/{name} {what_not}: {exc}") from None
    strategy = (ds.get("spec", {}).get("updateStrategy") or {}).get("type") or "RollingUpdate"
    if restart and strategy != "RollingUpdate":
        raise DataplaneError(f"the DaemonSet {namespace}/{name} uses the {strategy} update strategy, so a restart "
                             "annotation would not replace its pods; delete the pods node by node instead. Nothing was changed")
    result: dict = {"changed": False, "restarted": False}
    if restart:
        result["changed"] = True
        if check_mode:
            result.update(daemonset_status(ds))
            return result
        stamp = stamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        try:
            ds = client.request("PATCH", path, patch, content_type="application/strategic-merge-patch+json")
        except Unreachable as exc:
            if exc.sent:
                raise DataplaneError(f"the restart of the DaemonSet {namespace}/{name} was sent but not answered, so "
                                     f"whether its pods are being replaced is not known: {exc}") from None
            raise DataplaneError(f"the DaemonSet {namespace}/{name} was not restarted: {exc}") from None
        except KubeApiError as exc:
            raise DataplaneError(f"the DaemonSet {namespace}/{name} was not restarted: {exc}") from None
        result["restarted"] = True
    started = clock.monotonic()
    done, what = rollout_progress(ds)
    while wait and not done:
        if clock.monotonic() - started >= timeout:
            raise DataplaneError(
                f"the rollout of the DaemonSet {namespace}/{name} did not finish within {timeout:g} s ({what}); "
                "pods not yet replaced keep running their previous configuration")
        clock.sleep(interval)
        try:
            ds = client.request("GET", path)
        except KubeApiError as exc:
            begun = f"was restarted (restartedAt {stamp})" if restart else "is rolling out"
            raise DataplaneError(f"the DaemonSet {namespace}/{name} {begun} but its rollout could not be followed "
                                 f"({what} when last seen): {exc}; pods not yet replaced keep running their previous "
                                 "configuration") from None
        done, what = rollout_progress(ds)
    result.update(daemonset_status(ds))
    result["rolled_out"] = done
    result["progress"] = what
    result["waited"] = round(clock.monotonic() - started, 1)
    return result
