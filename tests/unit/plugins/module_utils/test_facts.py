"""dataplane_info's backend: every parser on real captured output, and gather() on captured scenarios.

Fixtures: tests/unit/fixtures/dataplane_info/<scenario>, captured from real tools and kernels by
tests/netns/capture_dataplane_info.py (netns scenarios on this machine's kernel, vm-* in the
real-kernel VM). The gather cases are listed in dataplane_info_cases.yml with the exact commands
each must run.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _facts as facts
from ansible_collections.kubenode.dataplane.plugins.module_utils._modfiles import parse_modules_load
from tests.unit import dataplane_info_fixtures as fx

CASES = yaml.safe_load((Path(__file__).parent / "dataplane_info_cases.yml").read_text())


# ---------------------------------------------------------------------------------------------
# parsers on real output


def test_kernel_config_of_this_machine_and_of_debian():
    host = facts.parse_kernel_config(fx.read("bare", "kernel-config.txt"))
    assert host["CONFIG_MODULES"] == "n" and host["CONFIG_IP_VS"] == "n"
    assert host["CONFIG_NF_TABLES"] == "y" and host["CONFIG_IP_NF_IPTABLES_LEGACY"] == "y"
    debian = facts.parse_kernel_config(fx.read("vm-plain", "kernel-config.txt"))
    assert debian["CONFIG_MODULES"] == "y" and debian["CONFIG_IP_VS"] == "m" and debian["CONFIG_NF_TABLES"] == "m"
    assert facts.tristate(debian, "CONFIG_IP_VS") == "module"
    assert facts.tristate(host, "CONFIG_IP_VS") == "missing"
    assert facts.tristate(host, "CONFIG_VXLAN") == "builtin"
    # a symbol the file does not mention is not set
    assert facts.tristate(debian, "CONFIG_NO_SUCH_THING") == "missing"
    assert facts.tristate(None, "CONFIG_IP_VS") == "unknown"


def test_proc_modules_modules_builtin_and_modules_dep_of_the_vm():
    release = "6.1.0-56-amd64"
    loaded = facts.parse_proc_modules(fx.read("vm-ipvs", "root/proc/modules"))
    assert {"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "dummy"} <= set(loaded)
    assert loaded["ip_vs"] == "Live"
    assert "ip_vs" not in facts.parse_proc_modules(fx.read("vm-plain", "root/proc/modules"))
    builtin = facts.parse_modules_builtin(fx.read("vm-plain", f"root/lib/modules/{release}/modules.builtin"))
    # Debian builds these into the kernel: the '-' of amd-uncore.ko becomes '_'
    assert {"amd_uncore", "libblake2s_x86_64"} <= builtin
    assert "ip_vs" not in builtin
    available = facts.parse_modules_dep(fx.read("vm-plain", f"root/lib/modules/{release}/modules.dep"))
    assert {"ip_vs", "ip_vs_rr", "br_netfilter", "overlay", "dummy"} <= available


def test_module_status_precedence():
    assert facts.module_status("ip_vs", {"ip_vs": "Live"}, set(), {"ip_vs"}, None, False) == "loaded"
    assert facts.module_status("ip_vs", {}, set(), {"ip_vs"}, None, False) == "available"
    assert facts.module_status("ip_vs", {}, set(), set(), None, False) == "missing"
    # a kernel without module support: the config decides, /sys/module shows built-ins
    assert facts.module_status("nf_conntrack", None, None, None, {"CONFIG_NF_CONNTRACK": "y"}, True) == "builtin"
    assert facts.module_status("ip_vs", None, None, None, {"CONFIG_IP_VS": "n"}, False) == "missing"
    assert facts.module_status("ip_vs", None, None, None, None, False) == "unknown"


def test_iptables_save_of_kube_proxy_and_calico_on_nft():
    tables = facts.parse_iptables_save(fx.read("kube-iptables-calico", "out/iptables-nft-save.txt"))
    assert sorted(tables) == ["filter", "mangle", "nat"]
    assert tables["nat"]["chains"]["KUBE-SERVICES"] == 3
    assert tables["nat"]["chains"]["KUBE-SVC-TCOU7JCQXEZGVUNU"] == 3
    assert tables["filter"]["policies"] == {"INPUT": "ACCEPT", "FORWARD": "ACCEPT", "OUTPUT": "ACCEPT"}
    summary = facts.summarise_save(tables)
    assert summary["rules"] == 56
    assert summary["chains"] == 34 and summary["kube_chains"] == 22 and summary["calico_chains"] == 12
    assert summary["kubernetes_hint"] and summary["kube_services"]
    assert summary["policies"] == []
    assert facts.save_header_backend(fx.read("kube-iptables-calico", "out/iptables-nft-save.txt")) == "nft"


def test_iptables_save_of_docker_rules_in_legacy():
    text = fx.read("mixed", "out/iptables-legacy-save.txt")
    summary = facts.summarise_save(facts.parse_iptables_save(text))
    assert summary["rules"] == 9 and summary["chains"] == 4 and summary["kube_chains"] == 0
    assert summary["policies"] == ["filter/FORWARD=DROP"]
    assert not summary["kubernetes_hint"]
    # the legacy save names no backend in its header
    assert facts.save_header_backend(text) == "legacy"


def test_empty_iptables_save_is_empty():
    assert facts.parse_iptables_save(fx.read("bare", "out/iptables-nft-save.txt")) == {}
    assert facts.save_header_backend("") is None


def test_iptables_version_of_both_variants():
    assert facts.parse_iptables_version(fx.read("versions", "iptables-nft-V.txt")) == ("1.8.9", "nft")
    assert facts.parse_iptables_version(fx.read("versions", "iptables-legacy-V.txt")) == ("1.8.9", "legacy")
    # iptables before 1.8 printed no backend: it had only the legacy one
    assert facts.parse_iptables_version("iptables v1.6.1\n") == ("1.6.1", "legacy")
    assert facts.parse_iptables_version("") == (None, None)


def test_nft_list_tables_json_and_text_agree():
    as_json = facts.parse_nft_tables_json(fx.read("nftables-mode", "out/nft_-j_list_tables.txt"))
    as_text = facts.parse_nft_tables_text(fx.read("nftables-mode", "out/nft_list_tables.txt"))
    assert as_json == as_text
    assert as_json[:2] == [("ip", "kube-proxy"), ("ip6", "kube-proxy")]
    assert len(as_json) == 10
    assert facts.parse_nft_tables_json(fx.read("bare", "out/nft_-j_list_tables.txt")) == []


@pytest.mark.parametrize("family,name,owner", [
    ("ip", "kube-proxy", "kube-proxy"),
    ("ip6", "kube-proxy", "kube-proxy"),
    ("inet", "kube-proxy", "unknown"),
    ("ip", "calico", "calico"),
    ("inet", "firewalld", "firewalld"),
    ("ip", "docker-bridges", "docker"),
    ("inet", "kubenode_firewall", "kubenode.dataplane"),
    ("ip", "filter", "iptables-nft"),
    ("ip6", "raw", "iptables-nft"),
    ("bridge", "filter", "iptables-nft"),
    ("inet", "filter", "unknown"),
])
def test_table_owner(family, name, owner):
    assert facts.table_owner(family, name) == owner


def test_proc_net_ip_vs_of_the_vm():
    services = facts.parse_proc_ip_vs(fx.read("vm-ipvs", "root/proc/net/ip_vs"))
    # the kernel lists them in its hash order
    assert sorted((s["protocol"], s["address"] or "", s["port"] or 0, s["scheduler"], s["destinations"]) for s in services) == [
        ("fwm", "", 0, "sh", 0),
        ("tcp", "10.96.0.1", 443, "rr", 1),
        ("tcp", "fd00:10:96::a", 53, "rr", 0),
        ("udp", "10.0.2.15", 30053, "rr", 0),
    ]
    assert [s["fwmark"] for s in services if s["protocol"] == "fwm"] == [1]


def test_ip_addr_json_with_calico_and_kube_ipvs0_devices():
    links = facts.parse_ip_addr_json(fx.read("kube-iptables-calico", "out/ip_-j_-d_addr_show.txt"))
    assert links["cali1a2b3c4d5e6"]["kind"] == "veth"
    assert links["vxlan.calico"]["kind"] == "vxlan" and "10.244.1.0" in links["vxlan.calico"]["addresses"]
    assert links["lo"]["kind"] is None
    vm = facts.parse_ip_addr_json(fx.read("vm-ipvs", "out/ip_-j_-d_addr_show.txt"))
    assert vm["kube-ipvs0"] == {"kind": "dummy", "up": False, "addresses": ["10.96.0.1", "fd00:10:96::a"]}


# kubeadm writes KubeProxyConfiguration in this shape into the kube-proxy ConfigMap (config.conf)
KUBE_PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clusterCIDR: 10.244.0.0/16
iptables:
  masqueradeAll: false
  minSyncPeriod: 0s
ipvs:
  excludeCIDRs: null
  scheduler: ""
  strictARP: true   # MetalLB needs it
kind: KubeProxyConfiguration
metricsBindAddress: ""
mode: "ipvs"
"""


def test_kube_proxy_config_yaml_json_and_without_a_yaml_library(monkeypatch):
    assert facts.parse_kube_proxy_config(KUBE_PROXY_CONFIG) == {"kind": "KubeProxyConfiguration", "mode": "ipvs", "strict_arp": True}
    assert facts.parse_kube_proxy_config('{"kind": "KubeProxyConfiguration", "mode": "nftables"}')["mode"] == "nftables"
    # an empty mode is kube-proxy's default, iptables
    assert facts.parse_kube_proxy_config("kind: KubeProxyConfiguration\nmode: ''\n")["mode"] == "iptables"
    monkeypatch.setattr(facts, "HAS_YAML", False)
    assert facts.parse_kube_proxy_config(KUBE_PROXY_CONFIG) == {"kind": "KubeProxyConfiguration", "mode": "ipvs", "strict_arp": True}
    assert facts.parse_kube_proxy_config(KUBE_PROXY_CONFIG.replace("strictARP: true", "strictARP: false"))["strict_arp"] is False


def test_kube_proxy_config_that_is_no_mapping_is_refused():
    with pytest.raises(ValueError):
        facts.parse_kube_proxy_config("- a\n- b\n")
    with pytest.raises(ValueError):
        facts.parse_kube_proxy_config("mode: [unclosed\n")


def test_versions_cmdline_and_metrics_url():
    assert facts.parse_kube_version("Kubernetes v1.35.0\n") == "1.35.0"
    assert facts.version_tuple("1.35.0") >= (1, 35)
    assert facts.version_tuple("6.1.0-56-amd64")[:2] == (6, 1)
    argv = facts.parse_cmdline(b"/usr/local/bin/kube-proxy\0--config=/var/lib/kube-proxy/config.conf\0--proxy-mode\0ipvs\0")
    assert facts.flag_value(argv, "--config") == "/var/lib/kube-proxy/config.conf"
    assert facts.flag_value(argv, "--proxy-mode") == "ipvs"
    assert facts.flag_value(argv, "--hostname-override") is None
    assert facts.metrics_url("127.0.0.1:10249") == "http://127.0.0.1:10249/proxyMode"
    assert facts.metrics_url("0.0.0.0:10249") == "http://127.0.0.1:10249/proxyMode"
    assert facts.metrics_url("[::]:10249") == "http://[::1]:10249/proxyMode"
    assert facts.metrics_url("[fd00::1]:9999") == "http://[fd00::1]:9999/proxyMode"
    for bad in ("10249", "localhost", ":10249", "host:port"):
        with pytest.raises(ValueError):
            facts.metrics_url(bad)


# ---------------------------------------------------------------------------------------------
# gather() on captured scenarios


def walk(report: t.Mapping[str, t.Any], path: str) -> t.Any:
    if path == "findings:ids":
        return [f["id"] for f in report["findings"]]
    value: t.Any = report
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_gather(case, tmp_path):
    answer = case.get("endpoint")

    def fetch(url: str, timeout: float) -> str:
        assert timeout == 2.0
        if answer is None:
            return fx.refused(url, timeout)
        return answer + "\n"

    tools: t.Dict[str, t.Optional[str]] = {}
    overrides = {}
    if case.get("no_tools"):
        tools = dict.fromkeys(fx.CapturedModule(case["scenario"]).tools)
    if "kubelet" in case:
        tools["kubelet"] = "/usr/bin/kubelet"
        overrides[("kubelet", "--version")] = (0, case["kubelet"], "")
    for argv, (rc, err) in (case.get("fail") or {}).items():
        overrides[tuple(argv.split())] = (rc, "", err)
    options = {k: case[k] for k in ("metallb", "kube_proxy_config", "metrics_address") if k in case}
    gatherer, runner = fx.gatherer(case["scenario"], tmp_path, fetch, tools, overrides, **options)
    report = gatherer.gather()
    assert fx.history(runner) == case["commands"]
    problems = {path: walk(report, path) for path, want in case["expect"].items() if walk(report, path) != want}
    assert not problems, f"{problems}\nfindings: {report['findings']}\nunavailable: {report['unavailable']}"
    for finding in report["findings"]:
        assert finding["message"] and finding["remedy"] and "\n" not in finding["remedy"]


def test_findings_carry_their_numbers(tmp_path):
    gatherer, _runner = fx.gatherer("mixed", tmp_path)
    (finding,) = gatherer.gather()["findings"]
    assert finding["message"].startswith("both iptables backends hold rules (legacy 9 rules, nft 64 rules)")
    assert finding["remedy"].startswith("keep nft (kubenode.dataplane.iptables_backend)")


def test_forwarding_off_on_a_kubernetes_node_is_flagged(tmp_path):
    gatherer, _runner = fx.gatherer("kube-iptables-calico", tmp_path)
    # the captured node had forwarding on, as its scenario sets; turn it off in the copy
    (tmp_path / "root/proc/sys/net/ipv4/ip_forward").write_text("0\n")
    assert [f["id"] for f in gatherer.gather()["findings"]] == ["ip_forward_off"]


def test_kube_proxy_process_config_inside_its_container_and_metallb_speaker(tmp_path):
    """A kube-proxy pod and a MetalLB speaker as /proc shows them; the entries are written here in the
    shapes of kubeadm's kube-proxy DaemonSet and MetalLB's speaker DaemonSet (no real pods on this machine)."""
    gatherer, _runner = fx.gatherer("vm-ipvs", tmp_path)
    proc = tmp_path / "root" / "proc"
    kp = proc / "4242"
    (kp / "root/var/lib/kube-proxy").mkdir(parents=True)
    (kp / "comm").write_text("kube-proxy\n")
    (kp / "cmdline").write_bytes(b"/usr/local/bin/kube-proxy\0--config=/var/lib/kube-proxy/config.conf\0--hostname-override=node1\0")
    (kp / "root/var/lib/kube-proxy/config.conf").write_text(KUBE_PROXY_CONFIG.replace("strictARP: true", "strictARP: false"))
    sp = proc / "4343"
    sp.mkdir()
    (sp / "comm").write_text("speaker\n")
    (sp / "cmdline").write_bytes(b"/speaker\0--port=7472\0--log-level=info\0")
    (sp / "environ").write_bytes(b"METALLB_NODE_NAME=node1\0METALLB_HOST=10.0.2.15\0METALLB_ML_BIND_ADDR=10.0.2.15\0")
    other = proc / "4444"
    other.mkdir()
    (other / "comm").write_text("speaker\n")  # some other program called speaker: no METALLB_ variables
    (other / "environ").write_bytes(b"HOME=/root\0")
    report = gatherer.gather()
    kube_proxy = report["kube_proxy"]
    assert kube_proxy["running"] is True
    assert kube_proxy["config_path"] == "/proc/4242/root/var/lib/kube-proxy/config.conf"
    assert kube_proxy["configured_mode"] == "ipvs"
    assert (kube_proxy["strict_arp"], kube_proxy["strict_arp_source"]) == (False, "config")
    assert report["metallb"] == {"present": True, "evidence": ["MetalLB speaker process (pid 4343)"]}
    assert [f["id"] for f in report["findings"]] == ["strict_arp_off_with_metallb"]
    assert "(seen in its config)" in report["findings"][0]["message"]


def test_kube_proxy_config_option_and_proxy_mode_flag(tmp_path):
    gatherer, _runner = fx.gatherer("vm-plain", tmp_path, kube_proxy_config="/etc/kubernetes/kube-proxy.yaml")
    (tmp_path / "root/etc/kubernetes").mkdir(parents=True)
    (tmp_path / "root/etc/kubernetes/kube-proxy.yaml").write_text(KUBE_PROXY_CONFIG)
    report = gatherer.gather()
    assert report["kube_proxy"]["configured_mode"] == "ipvs" and report["kube_proxy"]["mode"] is None
    # configured for ipvs, and the modules are not there: warned before kube-proxy even starts
    # (and this fresh VM does not forward yet)
    assert [f["id"] for f in report["findings"]] == ["ipvs_modules_missing", "ip_forward_off"]
    assert "ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh, nf_conntrack are not loaded" in report["findings"][0]["message"]


def test_unreadable_kube_proxy_config_is_reported_not_failed(tmp_path):
    gatherer, _runner = fx.gatherer("bare", tmp_path, kube_proxy_config="/nonexistent/config.conf")
    report = gatherer.gather()
    assert report["unavailable"] == [{"part": "kube-proxy configuration", "reason": "/nonexistent/config.conf is not readable"}]
    assert report["kube_proxy"]["configured_mode"] is None


def test_extra_sysctls_are_read_and_absent_ones_are_null(tmp_path):
    gatherer, _runner = fx.gatherer("vm-ipvs", tmp_path, extra_sysctls=["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"])
    sysctls = gatherer.gather()["sysctls"]
    assert list(sysctls).count("net.ipv4.ip_forward") == 1
    # not captured in this scenario's tree: absent, not 0
    assert sysctls["net.ipv4.conf.all.rp_filter"] is None
    assert sysctls["net.ipv4.vs.conntrack"] == "0"


@pytest.mark.parametrize("name", ["net.//.x", "../etc/passwd", "", "NET.ipv4.ip_forward", "net.ipv4.ip_forward "])
def test_names_that_are_not_sysctls_are_refused(name):
    with pytest.raises(facts.DataplaneError, match=r"^extra_sysctls\[1\] .* is not a sysctl name"):
        facts.check_sysctl_names(["net.ipv4.ip_forward", name])


def test_sysctl_names_with_an_interface_containing_a_dot_pass():
    facts.check_sysctl_names(["net.ipv4.conf.eth0/100.rp_filter", "net.bridge.bridge-nf-call-iptables"])


def test_modules_loaded_at_boot_from_real_modules_load_files():
    here = Path(__file__).resolve().parents[2] / "fixtures" / "dataplane_info" / "modules-load"
    ours = parse_modules_load((here / "kubenode-dataplane.conf").read_text())
    assert set(ours) == {"br_netfilter", "ip_vs", "ip_vs_rr", "ip_vs_sh", "ip_vs_wrr", "nf_conntrack", "overlay"}
    assert parse_modules_load((here / "debian-modules.conf").read_text()) == []
    assert parse_modules_load((here / "zz-other-tool.conf").read_text()) == ["loop"]
    assert parse_modules_load("ip-vs-rr  # dashes\n; a comment\n") == ["ip_vs_rr"]
