"""ipvs_services, ipvs_info and the ipvs role on the real-kernel VM, in one boot (plus one real reboot).

check mode on a node without ip_vs (nothing loaded) -> apply through the role -> a second run changed=false
-> real traffic through the virtual service to HTTP servers in two network namespaces, alternating with rr
-> a weight change made in place while a TCP connection is held open across it -> purge limited to its
scope, kube-ipvs0-bound services untouched -> bad input fails naming the service, nothing changed -> a
kernel refusal rolled back -> drain -> persist, reboot, the owned services back and nothing else.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

LAB = Path(__file__).resolve().parent / "ipvs_lab"
VIP = "10.99.0.10"
RS1, RS2 = "192.168.77.11", "192.168.77.12"


def masq(address: str, **extra) -> dict:
    return {"address": address, "forwarding_method": "masquerade", **extra}


def services(weights=(1, 1)) -> list:
    return [
        {"address": VIP, "port": 80, "scheduler": "rr",
         "real_servers": [masq(RS1, port=8080), masq(RS2, port=8080)]},
        {"address": VIP, "port": 9000, "scheduler": "wrr",
         "real_servers": [masq(RS1, weight=weights[0]), masq(RS2, weight=weights[1])]},
        {"protocol": "udp", "address": "fd99::53", "port": 53, "scheduler": "sh", "scheduler_flags": ["sh-port"],
         "real_servers": [masq("fd77::11", port=5353)]},
    ]


def saved(weights=(1, 1)) -> list:
    """The services above as ipvsadm-save -n writes them."""
    return [
        f"-A -t {VIP}:80 -s rr",
        f"-a -t {VIP}:80 -r {RS1}:8080 -m -w 1",
        f"-a -t {VIP}:80 -r {RS2}:8080 -m -w 1",
        f"-A -t {VIP}:9000 -s wrr",
        f"-a -t {VIP}:9000 -r {RS1}:9000 -m -w {weights[0]}",
        f"-a -t {VIP}:9000 -r {RS2}:9000 -m -w {weights[1]}",
        "-A -u [fd99::53]:53 -s sh -b sh-port",
        "-a -u [fd99::53]:53 -r [fd77::11]:5353 -m -w 1",
    ]


ROLE_VARS = {
    # kubenode.dataplane.kernel_module is built on another branch; the role loads ip_vs through it when asked
    "ipvs_manage_kernel_modules": False,
    # the image has them; the first run checks them once, later runs save the apt time (slow under emulation)
    "ipvs_manage_packages": False,
    "ipvs_persist_name": "vmtest",
    "ipvs_timeouts": {"udp": 60},
}


def sh(machine, script: str, check: bool = True) -> str:
    proc = subprocess.run(machine.ssh_argv("bash", "-s"), input=script, capture_output=True, text=True, timeout=300,
                          check=False)
    if check:
        assert proc.returncode == 0, f"{script}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    return proc.stdout


def ipvs_save(machine) -> list:
    return sh(machine, "ipvsadm-save -n").splitlines()


def play(tasks: list, role_vars: dict | None = None) -> list:
    out = [{"name": "ipvs on the VM", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    if role_vars is not None:
        out[0]["vars"] = role_vars
    return out


def role_task(name: str = "the ipvs role") -> dict:
    return {"name": name, "ansible.builtin.include_role": {"name": "kubenode.dataplane.ipvs"}}


def role_result(run) -> dict:
    """The result of the role's ipvs_services task (role tasks are recorded as 'ROLE : NAME')."""
    found = [r for r in run.results if r["task"].endswith("Manage the IPVS virtual services")]
    assert found, run.explain()
    return found[-1]["result"]


def module_task(name: str, check: bool = False, ignore: bool = False, **args) -> dict:
    task = {"name": name, "kubenode.dataplane.ipvs_services": args, "register": "out"}
    if check:
        task["check_mode"] = True
        task["diff"] = True
    if ignore:
        task["ignore_errors"] = True
    return task


@pytest.fixture(scope="module")
def lab(vm):
    machine, inventory = vm
    files = "".join(f"cat > /root/kn-lab/{p.name} <<'KN_EOF'\n{p.read_text()}KN_EOF\n" for p in sorted(LAB.iterdir()))
    sh(machine, "mkdir -p /root/kn-lab\n" + files)
    # a node where nothing loaded ip_vs yet: unload what earlier tests of the session may have loaded
    sh(machine, """
        ipvsadm --stop-daemon master 2>/dev/null || true
        command -v ipvsadm >/dev/null && ipvsadm -C 2>/dev/null || true
        mods=$(awk '$1 ~ /^ip_vs_/ {print $1}' /proc/modules)
        [ -z "$mods" ] || modprobe -r $mods
        modprobe -r ip_vs || true
        rm -f /etc/kubenode-dataplane/ipvs/vmtest.rules
        test ! -e /proc/net/ip_vs
        bash /root/kn-lab/lab.sh
    """)
    yield machine, inventory
    # the session's VM goes on to other tests: nothing of this lab may load ip_vs at their next reboot
    sh(machine, """
        for unit in $(systemctl list-unit-files --no-legend 'kubenode-ipvs-restore@*' | awk '{print $1}') \
                    $(systemctl list-units --all --no-legend --plain 'kubenode-ipvs-restore@*' | awk '{print $1}'); do
            systemctl disable --now "$unit" 2>/dev/null || true
        done
        rm -f /etc/kubenode-dataplane/ipvs/*.rules /etc/sysctl.d/91-kubenode-ipvs.conf
        rm -f /etc/systemd/system/sysinit.target.wants/kubenode-ipvs-restore@*.service
        systemctl daemon-reload
        ipvsadm -C 2>/dev/null || true
        for ns in kn-rs1 kn-rs2; do { ip netns pids $ns 2>/dev/null | xargs -r kill; } || true; ip netns del $ns 2>/dev/null || true; done
        mods=$(awk '$1 ~ /^ip_vs_/ {print $1}' /proc/modules)
        [ -z "$mods" ] || modprobe -r $mods || true
        modprobe -r ip_vs || true
    """, check=False)


def test_check_mode_loads_nothing_then_the_role_applies_and_a_second_run_changes_nothing(lab, playbook):
    machine, inventory = lab
    same = dict(services=services(), timeouts={"udp": 60}, persist=True, persist_name="vmtest")
    run = playbook(play([
        module_task("check on a node without ip_vs", check=True, **same),
        {"name": "ip_vs after the check", "ansible.builtin.stat": {"path": "/proc/net/ip_vs"}, "register": "out"},
        role_task(),
        module_task("apply again", **same),
        module_task("check again", check=True, **same),
        {"name": "read back", "kubenode.dataplane.ipvs_info": {}, "register": "out"},
    ], {**ROLE_VARS, "ipvs_manage_packages": True, "ipvs_services": services()}), inventory)
    assert run.rc == 0, run.explain()

    check = run.task("check on a node without ip_vs")["result"]
    assert check["changed"] is True and check["ipvs_loaded"] is False
    assert check["diff"]["before"].startswith("# ip_vs is not loaded: no services\n")
    assert "TCP  10.99.0.10:80 rr\n  -> 192.168.77.11:8080" in check["diff"]["after"]
    assert [op for op in check["operations"] if op.startswith("-A")] == [
        f"-A -t {VIP}:80 -s rr", f"-A -t {VIP}:9000 -s wrr", "-A -u [fd99::53]:53 -s sh -b sh-port"]
    assert run.task("ip_vs after the check")["result"]["stat"]["exists"] is False, "check mode loaded ip_vs"

    applied = role_result(run)
    assert applied["changed"] is True and len(applied["operations"]) == 8
    assert run.task("apply again")["result"]["changed"] is False
    assert run.task("apply again")["result"]["operations"] == []
    assert run.task("check again")["result"]["changed"] is False

    info = run.task("read back")["result"]
    assert info["ipvs_loaded"] is True and info["version"] == "1.2.1" and info["timeouts"]["udp"] == 60
    assert [s["name"] for s in info["services"]] == [f"TCP {VIP}:80", f"TCP {VIP}:9000", "UDP [fd99::53]:53"]
    assert not any(s["kube_proxy"] for s in info["services"])
    assert info["sysctls"]["net.ipv4.vs.conntrack"] == "1"
    assert ipvs_save(machine) == saved()


def test_traffic_alternates_between_the_two_namespaces_with_rr(lab):
    machine = lab[0]
    answers = sh(machine, f"for i in 1 2 3 4 5 6; do curl -s --max-time 5 http://{VIP}/; done").split()
    assert sorted(set(answers)) == ["rs1", "rs2"] and len(answers) == 6
    assert all(a != b for a, b in zip(answers, answers[1:])), answers


def hold(machine, name: str) -> str:
    """Open a TCP connection to VIP:9000 from the VM and keep it (see ipvs_lab/hold_client.py); who answered."""
    sh(machine, f"""
        rm -f /tmp/{name}*
        setsid python3 /root/kn-lab/hold_client.py {VIP} /tmp/{name}.go /tmp/{name} </dev/null >/dev/null 2>&1 &
        for _ in $(seq 150); do [ -s /tmp/{name}.first ] && break; sleep 0.2; done
    """)
    first = sh(machine, f"cat /tmp/{name}.first")
    assert first in ("rs1:one", "rs2:one"), first
    return first.split(":")[0]


def established(listing: str) -> list:
    """The IPVS connection entries (ipvsadm -Lnc) to VIP:9000 that are established, without their expiry timers."""
    rows = [line.split() for line in listing.splitlines()]
    return sorted(" ".join(row[:1] + row[2:]) for row in rows if len(row) == 6 and row[2] == "ESTABLISHED"
                  and row[4] == f"{VIP}:9000")


def test_weight_change_in_place_purge_scope_kube_proxy_bad_input_rollback_and_drain(lab, playbook):
    """One playbook, so one Ansible start: the role changes weights while connection A is held; purge in a scope
    with foreign and kube-proxy services around; bad inputs; a kernel refusal; a drain with connection B held."""
    machine, inventory = lab
    sh(machine, f"""
        ipvsadm -A -t 10.99.0.20:80 -s rr && ipvsadm -a -t 10.99.0.20:80 -r {RS1}:8080 -m
        ipvsadm -A -t 10.98.0.1:80 -s wlc && ipvsadm -a -t 10.98.0.1:80 -r {RS2}:8080 -m -w 7
        ipvsadm -A -t 10.99.0.30:443 -s rr && ipvsadm -a -t 10.99.0.30:443 -r {RS1}:6443 -m
        ipvsadm --start-daemon master --mcast-interface eth0
    """)
    held_a = hold(machine, "kn-hold-a")
    held_b = hold(machine, "kn-hold-b")
    conns = established(sh(machine, "ipvsadm -Lnc"))
    assert len(conns) == 2, conns
    http_stats = sh(machine, f"ipvsadm -Ln --stats -t {VIP}:80")
    before = ipvs_save(machine)
    foreign = [line for line in before if "10.98.0.1:" in line or "10.99.0.30:" in line]
    assert len(foreign) == 4
    valid = {"address": "10.99.0.40", "port": 80, "real_servers": [masq(RS1, port=8080)]}
    owned = dict(services=services(weights=(5, 2)), timeouts={"udp": 60}, persist=True, persist_name="vmtest")
    command = {"ansible.builtin.command": {"argv": ["ipvsadm-save", "-n"]}, "register": "out", "changed_when": False}
    run = playbook(play([
        {**role_task("weights changed by the role"), "vars": {"ipvs_services": services(weights=(5, 2))}},
        {"name": "connections after the change", "register": "out", "changed_when": False,
         "ansible.builtin.command": {"argv": ["ipvsadm", "-Lnc"]}},
        {"name": "counters after the change", "register": "out", "changed_when": False,
         "ansible.builtin.command": {"argv": ["ipvsadm", "-Ln", "--stats", "-t", f"{VIP}:80"]}},
        {"name": "let connection A talk again", "ansible.builtin.file": {"path": "/tmp/kn-hold-a.go", "state": "touch"}},
        {"name": "connection A answered", "ansible.builtin.wait_for": {"path": "/tmp/kn-hold-a.second", "timeout": 60}},
        module_task("purge inside the scope", purge=True, purge_scope={"addresses": ["10.99.0.0/24"]}, **owned),
        module_task("a kube-proxy service", ignore=True, services=[{"address": "10.99.0.30", "port": 443, "scheduler": "wlc"}]),
        module_task("a bad address", ignore=True, services=[valid, {"address": "10.99.0.300", "port": 80}]),
        module_task("an unknown scheduler", ignore=True, services=[valid, {"address": "10.99.0.41", "port": 80, "scheduler": "nosuch"}]),
        module_task("a method the family does not allow", ignore=True,
                    services=[valid, {"address": "10.99.0.42", "port": 80, "real_servers": [masq("fd77::11")]}]),
        module_task("refused by the kernel", ignore=True,
                    services=[valid, {"address": "10.99.0.43", "port": 80,
                                      "real_servers": [{"address": "fd77::11", "forwarding_method": "tunnel"}]}]),
        {"name": "after the failures", **command},
        module_task("drain a service away", drain=True, drain_timeout=3,
                    services=[{"address": VIP, "port": 9000, "state": "absent"}]),
        {"name": "after the drain", **command},
        {**role_task("the role puts it back"), "vars": {"ipvs_services": services(weights=(5, 2))}},
    ], ROLE_VARS), inventory)
    sh(machine, "ipvsadm --stop-daemon master; touch /tmp/kn-hold-b.go")
    assert run.rc == 0, run.explain()  # the failures above are expected, and ignored

    # the weight change: two in-place edits; connection A kept its entry and talked again; nothing else moved
    changes = [r["result"] for r in run.results if r["task"].endswith("Manage the IPVS virtual services")]
    assert changes[0]["operations"] == [f"-e -t {VIP}:9000 -r {RS1}:9000 -m -w 5", f"-e -t {VIP}:9000 -r {RS2}:9000 -m -w 2"]
    assert established(run.task("connections after the change")["result"]["stdout"]) == conns
    assert run.task("counters after the change")["result"]["stdout"] + "\n" == http_stats
    assert sh(machine, "cat /tmp/kn-hold-a.error 2>/dev/null; cat /tmp/kn-hold-a.second") == f"{held_a}:two"

    purge = run.task("purge inside the scope")["result"]
    assert purge["changed"] is True and purge["operations"] == ["-D -t 10.99.0.20:80"]
    assert purge["kube_proxy_addresses"] == ["10.99.0.30"]

    def failure(name: str) -> str:
        record = run.task(name)
        assert record["status"] == "ignored", record
        message = record["result"]["msg"]
        assert message.endswith(("nothing was changed", "put back as they were")), message
        return message

    assert failure("a kube-proxy service").startswith(
        "services[0] (TCP 10.99.0.30:443): 10.99.0.30 is bound to kube-ipvs0, so this service is kube-proxy's")
    assert failure("a bad address").startswith("services[1]: address '10.99.0.300' is not an IP address")
    assert failure("an unknown scheduler").startswith(
        "services[1] (TCP 10.99.0.41:80): scheduler 'nosuch' is not available: the kernel 6.1")
    assert failure("a method the family does not allow").startswith(
        "services[1].real_servers[0] (TCP 10.99.0.42:80) real server [fd77::11]:80: an ipv6 real server behind an "
        "ipv4 service needs forwarding_method tunnel")
    # the sync daemon makes the kernel refuse mixed-family real servers: a failure only the kernel knows
    assert failure("refused by the kernel") == (
        "services[1]: the kernel refused adding real server [fd77::11]:80 of service TCP 10.99.0.43:80: "
        "Invalid argument; the services in scope were put back as they were")
    expected = [line for line in before if "10.99.0.20:" not in line]
    expected = [line.replace(f"{RS1}:9000 -m -w 1", f"{RS1}:9000 -m -w 5").replace(f"{RS2}:9000 -m -w 1", f"{RS2}:9000 -m -w 2")
                for line in expected]
    assert run.task("after the failures")["result"]["stdout"].splitlines() == expected

    drain = run.task("drain a service away")["result"]
    assert drain["operations"] == [f"-e -t {VIP}:9000 -r {RS1}:9000 -m -w 0", f"-e -t {VIP}:9000 -r {RS2}:9000 -m -w 0",
                                   f"-D -t {VIP}:9000"]
    held = {"rs1": f"{RS1}:9000", "rs2": f"{RS2}:9000"}[held_b]
    assert {d["real_server"]: d["active_connections_left"] for d in drain["drained"]} == {
        held: 1, ({f"{RS1}:9000", f"{RS2}:9000"} - {held}).pop(): 0}
    assert all(d["waited"] >= 3 for d in drain["drained"])
    after_drain = run.task("after the drain")["result"]["stdout"].splitlines()
    assert [line for line in after_drain if "10.98.0.1:" in line or "10.99.0.30:" in line] == foreign
    assert not any(":9000" in line or "10.99.0.20:" in line or "10.99.0.4" in line for line in after_drain)
    assert changes[-1]["operations"][0] == f"-A -t {VIP}:9000 -s wrr"


def test_owned_services_come_back_after_a_reboot_and_nothing_else(lab, playbook):
    machine, inventory = lab
    rules = sh(machine, "cat /etc/kubenode-dataplane/ipvs/vmtest.rules").splitlines()
    assert rules == saved(weights=(5, 2)) + ["--set 900 120 60"]
    assert sh(machine, "systemctl is-enabled kubenode-ipvs-restore@vmtest.service").strip() == "enabled"

    started = time.monotonic()
    machine.reboot()
    assert time.monotonic() - started < 240
    assert ipvs_save(machine) == saved(weights=(5, 2)), "only the owned services come back (not 10.98.0.1, not kube-proxy's)"
    assert sh(machine, "ipvsadm -Ln --timeout").strip() == "Timeout (tcp tcpfin udp): 900 120 60"
    assert sh(machine, "systemctl is-active kubenode-ipvs-restore@vmtest.service").strip() == "active"
    # systemd-sysctl ran after the unit had loaded ip_vs, so the role's net.ipv4.vs file applied at boot
    assert sh(machine, "cat /proc/sys/net/ipv4/vs/conntrack").strip() == "1"

    run = playbook(play([role_task(), {"name": "read back", "kubenode.dataplane.ipvs_info": {}, "register": "out"}],
                        {**ROLE_VARS, "ipvs_services": services(weights=(5, 2))}), inventory)
    assert run.rc == 0, run.explain()
    assert run.changed() == 0, run.explain()
    info = run.task("read back")["result"]
    assert [(s["name"], [(r["address"], r["weight"]) for r in s["real_servers"]]) for s in info["services"]] == [
        (f"TCP {VIP}:80", [(RS1, 1), (RS2, 1)]), (f"TCP {VIP}:9000", [(RS1, 5), (RS2, 2)]),
        ("UDP [fd99::53]:53", [("fd77::11", 1)])]


def test_the_documented_node_local_apiserver_balancer(lab, playbook):
    """roles/ipvs/README.md's example, with the lab's HTTP servers standing in for the API servers: they have no
    route back to the node's virtual IP, so the answers prove the masquerade that the README adds."""
    machine, inventory = lab
    sh(machine, textwrap.dedent("""\
        ip link del kn-apiserver 2>/dev/null; nft delete table ip kubenode_apiserver 2>/dev/null
        bash /root/kn-lab/lab.sh
        for i in 1 2; do ip -n kn-rs$i route del default; done
        ip link add kn-apiserver type dummy && ip link set kn-apiserver up && ip addr add 169.254.20.10/32 dev kn-apiserver
        nft -f - <<'NFT'
        table ip kubenode_apiserver {
          chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 169.254.20.10 ip daddr { 192.168.77.11, 192.168.77.12 } tcp dport 8080 masquerade
          }
        }
        NFT
    """))
    readme = {
        "ipvs_persist_name": "apiserver",
        "ipvs_services": [{"address": "169.254.20.10", "port": 6443, "scheduler": "rr",
                           "real_servers": [masq(RS1, port=8080), masq(RS2, port=8080)]}],
        "ipvs_purge": True, "ipvs_purge_scope": {"addresses": ["169.254.20.10"]},
        "ipvs_drain": True, "ipvs_drain_timeout": 30,
    }
    others = [line for line in ipvs_save(machine) if "169.254.20.10" not in line]
    run = playbook(play([role_task()], {**ROLE_VARS, **readme}), inventory)
    assert run.rc == 0, run.explain()
    assert role_result(run)["operations"][0] == "-A -t 169.254.20.10:6443 -s rr"
    answers = sh(machine, "for i in 1 2 3 4; do curl -s --max-time 5 http://169.254.20.10:6443/; done").split()
    assert answers in (["rs1", "rs2", "rs1", "rs2"], ["rs2", "rs1", "rs2", "rs1"]), answers
    # the other services (the vmtest set restored at boot) are outside the balancer's scope: untouched
    assert [line for line in ipvs_save(machine) if "169.254.20.10" not in line] == others
    sh(machine, "nft delete table ip kubenode_apiserver; ip link del kn-apiserver")
