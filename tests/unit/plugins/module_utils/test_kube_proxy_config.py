"""kube_proxy_config's backend on real kubeadm / kube-proxy documents: merge, in-place edit, validation."""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy as kp
from ansible_collections.kubenode.dataplane.plugins.module_utils import _schema, _yamledit
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._kube_proxy_schema import SCHEMA

ROOT = Path(__file__).resolve().parents[4]
FIX = ROOT / "tests" / "unit" / "fixtures" / "kube_proxy"
CONFIGMAP = (FIX / "kubeadm-1.32-configmap-config.conf").read_text()


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def diff_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def kpc(text: str) -> dict:
    return next(d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == "KubeProxyConfiguration")


# ---- schema -----------------------------------------------------------------------------------

def test_published_schema_is_the_shipped_one():
    published = json.loads((ROOT / "docs" / "schemas" / "kube-proxy-config.v1alpha1.schema.json").read_text())
    assert published == SCHEMA


def test_the_schema_is_a_valid_draft7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", [
    "kubeadm-1.32-configmap-config.conf", "kubeadm-1.32-init-with-proxy.conf", "kubeadm-hand-written.conf",
    "kube-proxy-systemd-config.yaml",
])
def test_real_documents_are_valid_for_both_validators(name):
    doc = kpc(fixture(name))
    assert kp.check(doc) == []
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)) == []


def _mutations():
    base = yaml.safe_load(CONFIGMAP)

    def m(**changes):
        doc = copy.deepcopy(base)
        for dotted, value in changes.items():
            node = doc
            parts = dotted.split("__")
            for part in parts[:-1]:
                node = node[part]
            if value is KeyError:
                del node[parts[-1]]
            else:
                node[parts[-1]] = value
        return doc

    return {
        "unknown mode": (m(mode="ipvx"), {"$.mode"}),
        "kernelspace is Windows only": (m(mode="kernelspace"), {"$.mode"}),
        "scheduler": (m(ipvs__scheduler="fast"), {"$.ipvs.scheduler"}),
        "bool as string": (m(ipvs__strictARP="true"), {"$.ipvs.strictARP"}),
        "bool as int": (m(iptables__masqueradeAll=1), {"$.iptables.masqueradeAll"}),
        "int as bool": (m(iptables__masqueradeBit=True), {"$.iptables.masqueradeBit"}),
        "int as string": (m(nftables__masqueradeBit="14"), {"$.nftables.masqueradeBit"}),
        "bit out of range": (m(iptables__masqueradeBit=32), {"$.iptables.masqueradeBit"}),
        "oom below range": (m(oomScoreAdj=-1001), {"$.oomScoreAdj"}),
        "duration": (m(ipvs__syncPeriod="30 seconds"), {"$.ipvs.syncPeriod"}),
        "duration null": (m(configSyncPeriod=None), {"$.configSyncPeriod"}),
        "typo": (m(ipvs__strictArp=True), {"$.ipvs.strictArp"}),
        "top-level typo": (m(metricsBindAdress="0.0.0.0:10249"), {"$.metricsBindAdress"}),
        "list of ints": (m(nodePortAddresses=[1, 2]), {"$.nodePortAddresses[0]", "$.nodePortAddresses[1]"}),
        "not a list": (m(ipvs__excludeCIDRs="10.0.0.0/8"), {"$.ipvs.excludeCIDRs"}),
        "feature gate value": (m(featureGates={"NFTablesProxyMode": "yes"}), {"$.featureGates.NFTablesProxyMode"}),
        "missing kind": (m(kind=KeyError), {"$"}),
        "wrong apiVersion": (m(apiVersion="kubeproxy.config.k8s.io/v1alpha2"), {"$.apiVersion"}),
        "quantity": (m(logging__options__json__infoBufferSize="lots"), {"$.logging.options.json.infoBufferSize"}),
        "vmodule item": (m(logging__vmodule=[{"filePattern": "proxier", "verbosity": -1}]), {"$.logging.vmodule[0].verbosity"}),
        "several at once": (m(mode="x", ipvs__scheduler="y", conntrack__min=-1),
                            {"$.mode", "$.ipvs.scheduler", "$.conntrack.min"}),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_builtin_validator_agrees_with_jsonschema(case):
    doc, paths = _mutations()[case]
    ours = _schema.validate(SCHEMA, doc)
    reference = jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)
    ref_paths = set()
    for error in reference:
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            ref_paths |= {_schema.json_path(list(error.absolute_path) + [k]) for k in error.instance if k not in known}
        else:
            ref_paths.add(_schema.json_path(list(error.absolute_path)))
    assert {p for p, _m in ours} == ref_paths == paths


def test_messages_name_the_value_and_what_was_expected():
    errors = dict(kp.check(_mutations()["scheduler"][0]))
    assert errors["$.ipvs.scheduler"].startswith("'fast' is not one of '', 'rr', 'wrr'")
    errors = dict(kp.check(_mutations()["typo"][0]))
    assert errors["$.ipvs.strictArp"] == "'strictArp' is not a known field (did you mean 'strictARP'?)"
    errors = dict(kp.check(_mutations()["duration"][0]))
    assert errors["$.ipvs.syncPeriod"] == "'30 seconds' is not a Go duration such as '30s' or '1m30s'"
    errors = dict(kp.check(_mutations()["bool as string"][0]))
    assert errors["$.ipvs.strictARP"] == "'true' is not of type boolean or null"


@pytest.mark.parametrize("field,value,path", [
    ("clusterCIDR", "10.244.0.0/16,fd00:10:244::/56", None),
    ("clusterCIDR", "10.244.0.0/16,10.245.0.0/16", "$.clusterCIDR"),
    ("clusterCIDR", "10.244.0.0", "$.clusterCIDR"),
    ("nodePortAddresses", ["primary", "10.0.0.0/8"], None),
    ("nodePortAddresses", ["10.0.0.0/33"], "$.nodePortAddresses[0]"),
    ("metricsBindAddress", "0.0.0.0:10249", None),
    ("metricsBindAddress", "[::]:10249", None),
    ("metricsBindAddress", "localhost:10249", "$.metricsBindAddress"),
    ("metricsBindAddress", "127.0.0.1:99999", "$.metricsBindAddress"),
    ("bindAddress", "node-1", "$.bindAddress"),
])
def test_semantic_checks_kube_proxy_makes(field, value, path):
    doc = yaml.safe_load(CONFIGMAP)
    doc[field] = value
    errors = kp.check(doc)
    assert [p for p, _m in errors] == ([path] if path else [])


def test_min_sync_period_longer_than_sync_period():
    doc = yaml.safe_load(CONFIGMAP)
    doc["ipvs"].update(syncPeriod="30s", minSyncPeriod="1m")
    assert [p for p, _m in kp.check(doc)] == ["$.ipvs.minSyncPeriod"]
    doc["ipvs"].update(syncPeriod="0s")  # 0s is defaulted by kube-proxy: not compared
    assert kp.check(doc) == []


# ---- settings -> document ------------------------------------------------------------------------

def test_overlay_maps_options_to_upstream_names_and_named_options_win():
    params = {
        "mode": "ipvs", "cluster_cidr": None, "node_port_addresses": ["primary"], "metrics_bind_address": None,
        "ipvs": {"scheduler": "wrr", "strict_arp": True, "exclude_cidrs": None, "tcp_timeout": "900s"},
        "iptables": None, "nftables": {"masquerade_bit": 14}, "conntrack": {"max_per_core": 0, "tcp_be_liberal": False},
        "settings": {"mode": "iptables", "ipvs": {"strictARP": False, "syncPeriod": "30s"}, "featureGates": {"A": True}},
    }
    assert kp.overlay(params) == {
        "mode": "ipvs", "nodePortAddresses": ["primary"], "featureGates": {"A": True},
        "ipvs": {"scheduler": "wrr", "strictARP": True, "tcpTimeout": "900s", "syncPeriod": "30s"},
        "nftables": {"masqueradeBit": 14}, "conntrack": {"maxPerCore": 0, "tcpBeLiberal": False},
    }


# ---- in-place rewrite --------------------------------------------------------------------------------

def test_configmap_switch_to_ipvs_changes_the_mode_line_and_nothing_else():
    parsed = kp.parse(CONFIGMAP, "cm", "untouched", allow_append=False)
    text, merged = kp.rewrite(parsed, {"mode": "ipvs"})
    assert diff_lines(CONFIGMAP, text) == ['-mode: ""', "+mode: ipvs"]
    assert merged == dict(yaml.safe_load(CONFIGMAP), mode="ipvs")
    assert not text.endswith("\n")  # the ConfigMap value had no trailing line break: still none


def test_no_settings_change_nothing():
    parsed = kp.parse(CONFIGMAP, "cm", "untouched", allow_append=False)
    text, merged = kp.rewrite(parsed, {})
    assert text == CONFIGMAP and merged == parsed.data


def test_configmap_several_settings_each_change_only_their_line():
    parsed = kp.parse(CONFIGMAP, "cm", "untouched", allow_append=False)
    text, _merged = kp.rewrite(parsed, {
        "mode": "ipvs", "ipvs": {"strictARP": True, "excludeCIDRs": ["10.0.0.0/8"], "scheduler": "wrr"},
        "iptables": {"masqueradeBit": 14}, "conntrack": {"tcpEstablishedTimeout": "24h0m0s"},
    })
    assert sorted(diff_lines(CONFIGMAP, text)) == sorted([
        '-mode: ""', "+mode: ipvs",
        "-  strictARP: false", "+  strictARP: true",
        "-  excludeCIDRs: null", "+  excludeCIDRs:", "+  - 10.0.0.0/8",
        '-  scheduler: ""', "+  scheduler: wrr",
        "-  masqueradeBit: null", "+  masqueradeBit: 14",
        "-  tcpEstablishedTimeout: null", "+  tcpEstablishedTimeout: 24h0m0s",
    ])


def test_hand_written_kubeadm_file_keeps_comments_quotes_and_other_documents():
    original = fixture("kubeadm-hand-written.conf")
    parsed = kp.parse(original, "f", "untouched", allow_append=True)
    assert parsed.index == 2
    text, merged = kp.rewrite(parsed, {"mode": "ipvs", "ipvs": {"scheduler": "rr"}, "metricsBindAddress": "0.0.0.0:10249"})
    assert diff_lines(original, text) == [
        '-mode: "iptables"   # switch with kubenode.dataplane.kube_proxy',
        '+mode: "ipvs"   # switch with kubenode.dataplane.kube_proxy',
        "+  scheduler: rr",
        "+metricsBindAddress: 0.0.0.0:10249",
    ]
    head = original.split("# kube-proxy:")[0]
    assert text.startswith(head)  # the ClusterConfiguration and KubeletConfiguration, byte for byte
    assert merged["ipvs"] == {"scheduler": "rr", "strictARP": True}


def test_kubeadm_file_without_kube_proxy_document_gets_one_appended():
    original = fixture("kubeadm-join-only.yaml")
    parsed = kp.parse(original, "f", "untouched", allow_append=True)
    assert parsed.index is None
    text, merged = kp.rewrite(parsed, {"mode": "nftables"})
    assert text.startswith(original)
    assert text[len(original):] == (
        "---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n")
    assert merged == {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "nftables"}


def test_equal_settings_change_nothing():
    parsed = kp.parse(CONFIGMAP, "cm", "untouched", allow_append=False)
    text, _merged = kp.rewrite(parsed, {"mode": "", "ipvs": {"strictARP": False}, "iptables": {"masqueradeBit": None}})
    assert text == CONFIGMAP


@pytest.mark.parametrize("name,expected", [
    ("kubelet-config.yaml", "it holds KubeletConfiguration (kubelet.config.k8s.io/v1beta1)"),
    ("kubeadm-join-only.yaml", "it holds JoinConfiguration (kubeadm.k8s.io/v1beta4)"),
])
def test_documents_that_are_not_a_kube_proxy_configuration_are_refused(name, expected):
    with pytest.raises(kp.ConfigError) as err:
        kp.parse(fixture(name), name, "nothing was written", allow_append=False)
    assert expected in str(err.value) and str(err.value).endswith("nothing was written")


def test_other_versions_two_documents_and_bad_yaml_are_refused():
    v2 = CONFIGMAP.replace("kubeproxy.config.k8s.io/v1alpha1", "kubeproxy.config.k8s.io/v1alpha2")
    with pytest.raises(kp.ConfigError, match=r"\$\.apiVersion is 'kubeproxy.config.k8s.io/v1alpha2'"):
        kp.parse(v2, "cm", "x", allow_append=False)
    with pytest.raises(kp.ConfigError, match="holds 2 KubeProxyConfiguration documents"):
        kp.parse(CONFIGMAP + "\n---\n" + CONFIGMAP, "cm", "x", allow_append=False)
    with pytest.raises(kp.ConfigError, match="is not valid YAML"):
        kp.parse("mode: [ipvs\n", "cm", "x", allow_append=False)
    with pytest.raises(kp.ConfigError, match="the text is empty"):
        kp.parse("", "cm", "x", allow_append=False)


# ---- the YAML editor on its own ------------------------------------------------------------------

@pytest.mark.parametrize("before,path,value,after", [
    # an implicit null keeps the rest of the line layout
    ("a: 1\nmode:\nz: 2\n", ["mode"], "ipvs", "a: 1\nmode: ipvs\nz: 2\n"),
    # a trailing comment stays on its line
    ("mode: iptables # why\nb: 1\n", ["mode"], "ipvs", "mode: ipvs # why\nb: 1\n"),
    # single quotes kept
    ("mode: 'iptables'\n", ["mode"], "nftables", "mode: 'nftables'\n"),
    # a new key in an unsorted mapping goes last, in a sorted one in its place
    ("z: 1\na: 2\n", ["m"], True, "z: 1\na: 2\nm: true\n"),
    ("a: 1\nz: 2\n", ["m"], True, "a: 1\nm: true\nz: 2\n"),
    # a missing section is created, nested at the document's indentation (4 here)
    ("kind: X\nipvs:\n    strictARP: true\n", ["iptables", "masqueradeBit"], 14,
     "kind: X\nipvs:\n    strictARP: true\niptables:\n    masqueradeBit: 14\n"),
    # a flow mapping is written again in flow style
    ("proxy: {}\n", ["proxy", "disabled"], True, "proxy: {disabled: true}\n"),
    # a block list replaced keeps its indentation
    ("l:\n  - a\n  - b\nz: 1\n", ["l"], ["c"], "l:\n  - c\nz: 1\n"),
    # a list emptied
    ("l:\n- a\nz: 1\n", ["l"], [], "l: []\nz: 1\n"),
    # strings that would read back as something else are quoted
    ("v: x\n", ["v"], "0", 'v: "0"\n'),
    ("v: x\n", ["v"], "true", 'v: "true"\n'),
    ("v: x\n", ["v"], "a: b", 'v: "a: b"\n'),
    ("v: x\n", ["v"], "", 'v: ""\n'),
    # last key of a file without a final line break
    ("a: 1\nmode: x", ["mode"], "ipvs", "a: 1\nmode: ipvs"),
    # a scalar where a mapping is wanted
    ("ipvs: null\nz: 1\n", ["ipvs", "scheduler"], "rr", "ipvs:\n  scheduler: rr\nz: 1\n"),
])
def test_yaml_editor(before, path, value, after):
    assert _yamledit.set_value(before, 0, path, value) == after
    assert yaml.safe_load(after) is not None


def test_yaml_editor_refuses_duplicate_keys():
    with pytest.raises(_yamledit.EditError, match="appears 2 times"):
        _yamledit.set_value("mode: a\nmode: b\n", 0, ["mode"], "ipvs")


# ---- the converge loop with the content and file sources ----------------------------------------------

def test_content_source_check_mode_then_apply_then_idempotent():
    backend = kp.ConfigBackend(kp.ContentSource(CONFIGMAP), {"mode": "nftables"}, lambda msg: None)
    checked = converge(backend, check_mode=True, diff=True)
    assert checked["changed"] and checked["changes"] == ["$.mode"] and checked["effective_mode"] == "nftables"
    assert checked["previous_effective_mode"] == "iptables" and checked["previous_proxy_mode"] == ""
    assert checked["diff"]["before"] == CONFIGMAP
    applied = converge(kp.ConfigBackend(kp.ContentSource(CONFIGMAP), {"mode": "nftables"}, lambda m: None), False, False)
    again = converge(kp.ConfigBackend(kp.ContentSource(applied["content"]), {"mode": "nftables"}, lambda m: None), False, False)
    assert again["changed"] is False and again["content"] == applied["content"] and again["changes"] == []


def test_ipvs_mode_warns_about_the_deprecation():
    warnings = []
    converge(kp.ConfigBackend(kp.ContentSource(CONFIGMAP), {"mode": "ipvs"}, warnings.append), True, False)
    assert warnings == [kp.IPVS_DEPRECATION] and "KEP-5495" in warnings[0]


class FakeModule:
    """What FileSource needs of AnsibleModule: atomic_move and backup_local."""

    def __init__(self):
        self.moves = []

    def atomic_move(self, src, dest):
        self.moves.append(dest)
        os.replace(src, dest)

    def backup_local(self, path):
        dest = path + ".bak"
        Path(dest).write_bytes(Path(path).read_bytes())
        return dest


def test_file_source_writes_once_keeps_mode_and_backs_up(tmp_path):
    path = tmp_path / "kubeadm.yaml"
    path.write_text(fixture("kubeadm-1.32-init-with-proxy.conf"))
    path.chmod(0o600)
    module = FakeModule()
    backend = kp.ConfigBackend(kp.FileSource(module, str(path), False, True), {"mode": "ipvs"}, lambda m: None)
    result = converge(backend, check_mode=False, diff=False)
    assert result["changed"] and result["document_index"] == 2 and result["backup_file"] == str(path) + ".bak"
    assert diff_lines(fixture("kubeadm-1.32-init-with-proxy.conf"), path.read_text()) == ['-mode: ""', "+mode: ipvs"]
    stat = path.stat()
    again = converge(kp.ConfigBackend(kp.FileSource(module, str(path), False, True), {"mode": "ipvs"}, lambda m: None), False, False)
    assert again["changed"] is False and len(module.moves) == 1 and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_file_source_refuses_invalid_result_and_writes_nothing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(fixture("kube-proxy-systemd-config.yaml"))
    before = path.read_bytes()
    module = FakeModule()
    backend = kp.ConfigBackend(kp.FileSource(module, str(path), False, False), {"ipvs": {"scheduler": "fast"}}, lambda m: None)
    with pytest.raises(kp.ConfigError) as err:
        converge(backend, check_mode=False, diff=False)
    assert "$.ipvs.scheduler: 'fast' is not one of" in str(err.value)
    assert str(err.value).endswith(f"{path} was left as it was")
    assert err.value.details["errors"][0]["path"] == "$.ipvs.scheduler"
    assert path.read_bytes() == before and module.moves == []


def test_file_source_missing_file_is_an_error_unless_create(tmp_path):
    path = tmp_path / "new.yaml"
    module = FakeModule()
    with pytest.raises(kp.ConfigError, match="does not exist; set create=true"):
        converge(kp.ConfigBackend(kp.FileSource(module, str(path), False, False), {"mode": "ipvs"}, lambda m: None), False, False)
    result = converge(kp.ConfigBackend(kp.FileSource(module, str(path), True, False), {"mode": "nftables"}, lambda m: None), False, False)
    assert result["created"] and result["changes"] == ["$"]
    assert path.read_text() == "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("config,url", [
    ({}, "http://127.0.0.1:10249/proxyMode"),
    ({"metricsBindAddress": ""}, "http://127.0.0.1:10249/proxyMode"),
    ({"metricsBindAddress": "0.0.0.0:10249"}, "http://127.0.0.1:10249/proxyMode"),
    ({"metricsBindAddress": "[::]:10250"}, "http://[::1]:10250/proxyMode"),
    ({"metricsBindAddress": "192.0.2.7:9100"}, "http://192.0.2.7:9100/proxyMode"),
    ({"metricsBindAddress": "192.0.2.7"}, "http://192.0.2.7:10249/proxyMode"),
    ({"bindAddress": "2001:db8::1"}, "http://[::1]:10249/proxyMode"),
])
def test_proxy_mode_url_honours_metrics_bind_address(config, url):
    assert kp.proxy_mode_url(config) == url
