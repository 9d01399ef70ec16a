"""kubenode.dataplane.kernel_module on this machine's kernel, which is built without module
support (no /proc/modules, no /lib/modules): built-in modules are reported as present and
built in, a module the kernel lacks fails with a clear message. The tasks run inside a netns
host; no task here loads, unloads or persists anything (persistent is never set)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

OWN = [Path("/etc/modules-load.d/kubenode-dataplane.conf"), Path("/etc/modprobe.d/kubenode-dataplane.conf")]


def kernel_says_builtin(name: str) -> bool:
    """Independent reading of the kernel: /sys/module without initstate, or =y in the config."""
    sysdir = Path("/sys/module") / name
    if sysdir.is_dir() and not (sysdir / "initstate").exists():
        return True
    symbols = {"nf_tables": "NF_TABLES", "br_netfilter": "BRIDGE_NETFILTER", "ip_vs": "IP_VS"}
    config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    return name in symbols and f"\nCONFIG_{symbols[name]}=y\n" in config


def task(name, args, **extra):
    return {"name": name, "kubenode.dataplane.kernel_module": args, **extra}


@pytest.mark.skipif(Path("/proc/modules").exists(), reason="for kernels built without module support")
def test_builtins_reported_and_a_missing_module_refused(netns_pair, playbook):
    _lab, inventory = netns_pair
    builtins = ["nf_tables", "nf_conntrack", "bridge", "br_netfilter", "overlay"]
    assert all(kernel_says_builtin(n) for n in builtins)
    assert not kernel_says_builtin("ip_vs")
    own_before = [p.exists() for p in OWN]
    run = playbook([{
        "name": "kernel_module on this kernel", "hosts": "h1", "gather_facts": False,
        "tasks": [
            task("Built-in modules are present", {"name": builtins + ["nf_conntrack_ipv4"]}),
            task("Built-in modules in check mode", {"name": builtins}, check_mode=True),
            task("A module this kernel lacks", {"name": ["nf_tables", "ip_vs"]}, ignore_errors=True),
            task("Unloading a built-in module", {"name": ["nf_tables"], "state": "absent"}, ignore_errors=True),
            task("Unloading a built-in module, accepted", {"name": ["nf_tables"], "state": "absent", "ignore_builtin": True}),
        ],
    }], inventory, diff=True)
    assert run.rc == 0, run.explain()
    release = os.uname().release

    present = run.task("Built-in modules are present")
    assert present["status"] == "ok" and not present["result"]["changed"]
    by_name = {m["name"]: m for m in present["result"]["modules"]}
    for name in builtins:
        assert by_name[name]["builtin"] is True and by_name[name]["before"] == by_name[name]["after"] == "builtin", by_name[name]
    assert by_name["nf_tables"]["builtin_source"] == "/proc/config.gz (CONFIG_NF_TABLES=y)"
    assert by_name["nf_conntrack"]["builtin_source"] == "/sys/module/nf_conntrack"
    assert by_name["nf_conntrack_ipv4"]["resolved"] == "nf_conntrack"
    assert present["result"]["kernel"] == release
    assert not run.task("Built-in modules in check mode")["result"]["changed"]

    missing = run.task("A module this kernel lacks")
    assert missing["status"] == "ignored"
    assert missing["result"]["msg"] == (
        f"module ip_vs (name[1]) is not available on kernel {release}: it is not built in (CONFIG_IP_VS is not set in "
        "/proc/config.gz) and this kernel cannot load modules (it has no /proc/modules); nothing was changed")

    builtin_absent = run.task("Unloading a built-in module")
    assert builtin_absent["status"] == "ignored"
    assert f"nf_tables (name[0]) is built into kernel {release} and cannot be unloaded" in builtin_absent["result"]["msg"]
    accepted = run.task("Unloading a built-in module, accepted")
    assert accepted["status"] == "ok" and not accepted["result"]["changed"]
    assert any("is built into kernel" in w for w in accepted["result"].get("warnings", []))
    assert [p.exists() for p in OWN] == own_before
