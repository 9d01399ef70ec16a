"""Parsers of kubenode.dataplane's kernel-module backend on real captured output: the 6.1 VM
(Debian's kernel, modules) and this host (6.18 built without module support)."""

from __future__ import annotations

import gzip

import pytest

from tests.unit.kmod_support import FIXTURES

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kmod as k  # noqa: E402

VM = FIXTURES / "vm-6.1-boot"
REL = "6.1.0-56-amd64"
CMD = FIXTURES / "vm-6.1-cmd"


def text(path):
    return path.read_text()


def test_proc_modules_holders_refcounts_and_states():
    mods = k.parse_proc_modules(text(FIXTURES / "vm-6.1-seven" / "proc" / "modules"))
    assert mods["ip_vs"].holders == ("ip_vs_rr", "ip_vs_sh", "ip_vs_wrr")
    # the schedulers' registrations count too: refcount above the number of holders
    assert mods["ip_vs"].refcount == 6
    assert mods["nf_conntrack"].holders == ("ip_vs",)
    assert mods["overlay"] == k.Loaded("overlay", 163840, 0, (), "Live")
    assert len(mods) == 36
    boot = k.parse_proc_modules(text(VM / "proc" / "modules"))
    assert "ip_vs" not in boot and boot["ext4"].refcount == 1


def test_modules_dep_names_and_dependencies():
    deps = k.parse_modules_dep(text(VM / "lib" / "modules" / REL / "modules.dep"))
    assert len(deps) == 848
    assert deps["ip_vs_rr"][0] == "ip_vs" and "nf_conntrack" in deps["ip_vs_rr"]
    assert deps["overlay"] == ()
    # file names with '-' are module names with '_'
    assert "crc32c_intel" in deps and "crc32c-intel" not in deps


def test_modules_builtin_and_builtin_modinfo():
    builtin = k.parse_modules_builtin(text(VM / "lib" / "modules" / REL / "modules.builtin"))
    assert {"unix", "ipv6", "amd_uncore"} <= builtin and "ip_vs" not in builtin
    assert len(builtin) == 186
    info = k.parse_builtin_modinfo((VM / "lib" / "modules" / REL / "modules.builtin.modinfo").read_bytes())
    assert info["mmiotrace"]["params"] == {"trace_pc": "bool", "nommiotrace": "bool", "filter_offset": "ulong"}
    assert "net-pf-1" in info["unix"]["aliases"]


def test_modinfo_of_several_modules():
    info = k.parse_modinfo(text(CMD / "modinfo-overlay-nf_conntrack-ip_vs.out"))
    assert set(info) == {"overlay", "nf_conntrack", "ip_vs"}
    assert info["overlay"]["params"]["redirect_dir"] == "bool"
    assert info["overlay"]["params"]["redirect_max"] == "ushort"
    # declared with a description only (no type)
    assert info["overlay"]["params"]["check_copy_up"] == ""
    assert info["nf_conntrack"]["params"]["expect_hashsize"] == "uint"
    # hashsize is a module_param_call() parameter: modinfo does not know it, /sys/module does
    assert "hashsize" not in info["nf_conntrack"]["params"]
    assert info["ip_vs"]["params"] == {"conn_tab_bits": "int"}
    assert info["ip_vs"]["depends"] == ["nf_conntrack", "libcrc32c", "nf_defrag_ipv6"]
    assert info["ip_vs"]["filename"].endswith("/ipvs/ip_vs.ko")


def test_modinfo_of_a_builtin_module():
    info = k.parse_modinfo(text(CMD / "modinfo-unix.out"))
    assert info == {"unix": {"filename": "(builtin)", "params": {}, "depends": []}}


def test_dry_run_lists_each_insertion_once_in_order():
    steps = k.parse_dry_run(text(CMD / "dryrun-seven.out"))
    names = [n for verb, n in steps if verb == "insmod"]
    assert names == ["crc32c_intel", "libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs",
                     "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "llc", "stp", "bridge", "br_netfilter", "overlay"]
    assert k.parse_dry_run(text(CMD / "dryrun-seven-loaded.out")) == []
    assert k.parse_dry_run(text(CMD / "dryrun-overlay-params.out")) == [("insmod", "overlay")]
    assert ("install", "/bin/false") in k.parse_dry_run(text(CMD / "dryrun-blacklisted.out"))


def test_kconfig_of_this_host():
    config = k.parse_kconfig(gzip.decompress((FIXTURES / "host-6.18" / "proc" / "config.gz").read_bytes()).decode())
    assert config["NF_TABLES"] == "y"
    assert config["MODULES"] == "n"
    assert config["IP_VS"] == "n"


def test_kernel_view_on_the_vm():
    kern = k.Kernel(str(FIXTURES / "vm-6.1-seven"))
    kern._cache["dep"] = k.parse_modules_dep(text(VM / "lib" / "modules" / REL / "modules.dep"))
    assert kern.release == REL and kern.can_load()
    assert set(kern.loaded()) >= {"ip_vs", "overlay", "br_netfilter"}
    assert kern.param_values("overlay", ["redirect_dir", "nope"]) == {"redirect_dir": "N", "nope": None}
    assert kern.param_names("nf_conntrack") == {"acct", "expect_hashsize", "hashsize", "tstamp"}
    # a loaded module has initstate in /sys/module and is not built in
    assert kern.builtin_source("overlay") is None


def test_kernel_view_on_this_host():
    kern = k.Kernel(str(FIXTURES / "host-6.18"))
    assert kern.release == "6.18.44-fc-v657"
    assert not kern.can_load() and not kern.has_builtin_list()
    assert kern.builtin_source("nf_conntrack") == "/sys/module/nf_conntrack"
    assert kern.builtin_source("nf_tables") == "/proc/config.gz (CONFIG_NF_TABLES=y)"
    assert kern.builtin_source("ip_vs") is None
    assert "CONFIG_IP_VS is not set" in kern.why_missing("ip_vs")
    assert kern.param_values("nf_conntrack", ["hashsize"]) == {"hashsize": "262144"}


@pytest.mark.parametrize("read,wanted,same", [
    ("Y", "Y", True), ("Y", "1", True), ("N", "off", True), ("N", "Y", False), ("Y", "maybe", False),
    ("131072", "131072", True), ("16", "0x10", True), ("8192", "4096", False),
    ("(null)", "(null)", True), ("abc", "abd", False), (None, "anything", True),
])
def test_same_param(read, wanted, same):
    assert k.same_param(read, wanted) is same


def test_param_text():
    assert k.param_text(True, "x") == "Y" and k.param_text(False, "x") == "N"
    assert k.param_text(131072, "x") == "131072" and k.param_text("abc", "x") == "abc"
    with pytest.raises(k.KmodError, match="modules.0..params.p must be a string"):
        k.param_text(1.5, "modules[0].params.p")
    with pytest.raises(k.KmodError, match="without spaces"):
        k.param_text("a b", "x")


def test_modprobe_conf_round_trip():
    conf = k.ModprobeConf(options={"nf_conntrack": {"hashsize": "131072"}}, blacklist={"dccp"}, install={"dccp": "/bin/false"})
    rendered = k.render_modprobe_conf(conf, "p")
    assert rendered.splitlines()[2:] == ["blacklist dccp", "install dccp /bin/false", "options nf_conntrack hashsize=131072"]
    assert k.parse_modprobe_conf(rendered) == conf
    assert k.render_modprobe_conf(k.ModprobeConf(), "p") is None


def test_modules_load_round_trip():
    assert k.parse_modules_load("# c\n; c\nip-vs\n\nip_vs\noverlay\n") == ["ip_vs", "overlay"]
    assert k.render_modules_load(["overlay", "ip_vs"], "p").splitlines()[2:] == ["ip_vs", "overlay"]
    assert k.render_modules_load([], "p") is None
