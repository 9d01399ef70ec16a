"""kubenode.dataplane.kernel_module on a real kernel (Debian 12's 6.1 in the VM), tried as a
new user would: one task for the seven Kubernetes modules, check mode, idempotence, a real
reboot, parameters and reloads, refusals, and persistence that never touches other files.

One VM boot for the session; the steps run in file order and share the VM, and the checks are
batched into few ansible-playbook runs (each task costs ~3 s under emulation).
"""

from __future__ import annotations

import hashlib

import pytest

pytestmark = pytest.mark.vm

SEVEN = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "br_netfilter", "overlay"]
OWN = ["/etc/modules-load.d/kubenode-dataplane.conf", "/etc/modprobe.d/kubenode-dataplane.conf"]
# files of "another tool": they must come out of every step byte-identical
FOREIGN = {
    "/etc/modules-load.d/zz-other-tool.conf": "# written by another tool\nloop\n",
    "/etc/modprobe.d/other-tool.conf": "# written by another tool\nblacklist pcspkr\n",
}
APPLY = {"name": SEVEN, "persistent": "present"}
OVERLAY = {"modules": [{"name": "overlay", "params": {"redirect_dir": True}, "reload": True}], "persistent": "present"}
HEADER = ("# Written by kubenode.dataplane.kernel_module (prefix kubenode-dataplane).\n"
          "# This file belongs to the collection and is rewritten by it: change the playbook, not this file.\n")


def task(name: str, args: dict, **extra) -> dict:
    return {"name": name, "kubenode.dataplane.kernel_module": args, "register": "out", **extra}


def changed(res: dict) -> bool:
    assert res["status"] == "ok", res
    return bool(res["result"]["changed"])


def play(*tasks: dict) -> list:
    return [{"name": "kernel_module on the real kernel", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}]


class Node:
    """Reads the VM's state over SSH, independently of the module."""

    def __init__(self, machine) -> None:
        self.m = machine

    def sh(self, *argv: str) -> str:
        return self.m.ssh(*argv).stdout

    def loaded(self) -> dict[str, str]:
        return {line.split()[0]: line for line in self.sh("cat", "/proc/modules").splitlines()}

    def files(self, paths) -> dict[str, str | None]:
        out = {}
        for path in paths:
            proc = self.m.ssh("cat", path, check=False)
            out[path] = proc.stdout if proc.returncode == 0 else None
        return out

    def digest(self) -> dict[str, str]:
        return {p: hashlib.sha256((t or "").encode()).hexdigest() for p, t in self.files(FOREIGN).items()}

    def param(self, module: str, name: str) -> str:
        return self.sh("cat", f"/sys/module/{module}/parameters/{name}").strip()


@pytest.fixture(scope="module")
def node(vm):
    machine, inventory = vm
    n = Node(machine)
    # the session's VM may have run other tests: start from a kernel without the seven
    machine.ssh("rm", "-f", *OWN)
    if set(SEVEN) & set(n.loaded()):
        machine.reboot()
    still = sorted(set(SEVEN) & set(n.loaded()))
    assert not still, f"the VM loads {still} at boot from files that are not the collection's; this test needs them unloaded"
    for path, text in FOREIGN.items():
        machine.ssh(f"printf '%s' '{text}' > {path}")
    state = {"inventory": inventory, "foreign": n.digest()}
    assert all(t is not None for t in n.files(FOREIGN).values())
    yield n, state
    machine.ssh("rm", "-f", *FOREIGN)


def test_check_mode_changes_nothing(node, playbook):
    n, state = node
    before = n.loaded()
    run = playbook(play(task("Load the Kubernetes set", APPLY)), state["inventory"], check=True, diff=True)
    assert run.rc == 0, run.explain()
    res = run.task("Load the Kubernetes set")
    assert changed(res)
    assert res["result"]["plan"]["load"] == SEVEN
    assert "ip_vs: loaded  # load" in res["result"]["diff"]["after"]
    assert "ip_vs: not loaded" in res["result"]["diff"]["before"]
    assert n.loaded() == before
    assert n.files(OWN) == {p: None for p in OWN}
    assert n.digest() == state["foreign"]


def test_one_task_loads_the_seven_then_a_second_run_changes_nothing(node, playbook):
    n, state = node
    run = playbook(play(
        task("Load the Kubernetes set", APPLY),
        task("Load the Kubernetes set again", APPLY),
        task("Check mode again", APPLY, check_mode=True),
    ), state["inventory"], diff=True)
    assert run.rc == 0, run.explain()
    first = run.task("Load the Kubernetes set")
    assert changed(first)
    assert first["result"]["plan"]["load"] == SEVEN
    assert [m["after"] for m in first["result"]["modules"]] == ["loaded"] * 7
    assert not changed(run.task("Load the Kubernetes set again"))
    assert not changed(run.task("Check mode again"))
    loaded = n.loaded()
    assert set(SEVEN) <= set(loaded), sorted(set(SEVEN) - set(loaded))
    assert n.files(OWN) == {OWN[0]: HEADER + "".join(f"{m}\n" for m in sorted(SEVEN)), OWN[1]: None}
    assert n.digest() == state["foreign"]


def test_parameters_reload_aliases_and_refusals(node, playbook):
    n, state = node
    assert n.param("overlay", "redirect_dir") == "N"
    run = playbook(play(
        task("Reload overlay with redirect_dir", OVERLAY),
        task("Reload overlay again", OVERLAY),
        task("nf_conntrack_ipv4 on 6.1", {"name": ["nf_conntrack_ipv4"]}),
        task("An unknown module fails the task", {"name": ["ip_vs_lc", "nosuch_kmod", "ip_vs_dh"]}, ignore_errors=True),
        task("Unloading a module in use is refused", {"name": ["ip_vs"], "state": "absent"}, ignore_errors=True),
        task("Reloading a module in use is refused",
             {"modules": [{"name": "nf_conntrack", "params": {"hashsize": 4096}, "reload": True}]}, ignore_errors=True),
    ), state["inventory"], diff=True)
    assert run.rc == 0, run.explain()
    reload = run.task("Reload overlay with redirect_dir")
    assert changed(reload)
    assert reload["result"]["plan"]["reload"] == ["overlay"]
    assert reload["result"]["modules"][0]["params"] == {"redirect_dir": "Y"}
    assert not changed(run.task("Reload overlay again"))
    assert n.param("overlay", "redirect_dir") == "Y"
    assert n.files(OWN)[OWN[1]] == HEADER + "options overlay redirect_dir=Y\n"

    renamed = run.task("nf_conntrack_ipv4 on 6.1")
    assert not changed(renamed)
    assert renamed["result"]["modules"][0]["resolved"] == "nf_conntrack"
    assert "4.19" in renamed["result"]["modules"][0]["resolved_by"]

    release = n.sh("uname", "-r").strip()
    unknown = run.task("An unknown module fails the task")
    assert unknown["status"] == "ignored"
    assert "nosuch_kmod" in unknown["result"]["msg"] and release in unknown["result"]["msg"]
    assert "nothing was changed" in unknown["result"]["msg"]
    loaded = n.loaded()
    # nothing loaded, not even the valid names listed around the bad one
    assert "ip_vs_lc" not in loaded and "ip_vs_dh" not in loaded

    in_use = run.task("Unloading a module in use is refused")
    assert in_use["status"] == "ignored"
    assert "in use by ip_vs_rr, ip_vs_sh, ip_vs_wrr" in in_use["result"]["msg"]
    assert "ip_vs" in loaded

    held = run.task("Reloading a module in use is refused")
    assert held["status"] == "ignored"
    assert "cannot reload nf_conntrack (modules[0]): it is in use by ip_vs" in held["result"]["msg"]
    assert n.param("nf_conntrack", "hashsize") != "4096"
    assert n.digest() == state["foreign"]


def test_after_a_real_reboot_all_seven_are_loaded_with_their_parameters(node, playbook, vm):
    n, state = node
    vm[0].reboot()
    loaded = n.loaded()
    assert set(SEVEN) <= set(loaded), f"missing after reboot: {sorted(set(SEVEN) - set(loaded))}"
    assert n.param("overlay", "redirect_dir") == "Y"
    run = playbook(play(
        task("After the reboot nothing is left to do", APPLY),
        task("Overlay parameters held through the reboot", OVERLAY),
    ), state["inventory"])
    assert run.rc == 0, run.explain()
    assert not changed(run.task("After the reboot nothing is left to do"))
    assert not changed(run.task("Overlay parameters held through the reboot"))
    assert n.digest() == state["foreign"]


def test_persistent_absent_removes_only_the_collections_files(node, playbook):
    n, state = node
    absent = {"name": SEVEN, "persistent": "absent"}
    run = playbook(play(
        task("Stop loading them at boot", absent),
        task("Stop loading them at boot again", absent),
    ), state["inventory"], diff=True)
    assert run.rc == 0, run.explain()
    first = run.task("Stop loading them at boot")
    assert changed(first)
    assert first["result"]["plan"] == {"unload": [], "load": [], "reload": [], "dependencies": []}
    assert not changed(run.task("Stop loading them at boot again"))
    assert n.files(OWN) == {p: None for p in OWN}
    # the modules stay loaded (state=present is the default); other tools' files are untouched
    assert set(SEVEN) <= set(n.loaded())
    assert n.digest() == state["foreign"]
