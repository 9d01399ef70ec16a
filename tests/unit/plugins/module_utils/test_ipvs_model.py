"""ipvs_services: input validation (errors name the service at fault), the request plan, scopes, the texts,
and the converge loop on this machine, whose kernel has no IPVS at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _ipvs as ipvs
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner
from ansible_collections.kubenode.dataplane.plugins.module_utils._argspec import deferred
from ansible_collections.kubenode.dataplane.plugins.modules.ipvs_services import ARGUMENT_SPEC as FULL_SPEC

# what the module gives AnsibleModule: the services' suboptions are checked by parse_spec
ARGUMENT_SPEC = deferred(FULL_SPEC, "services")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ipvs"
CASES = yaml.safe_load((FIXTURES / "plan_cases.yml").read_text())


@pytest.fixture
def spec_of(make_module):
    """Module parameters as Ansible fills them (defaults and types), parsed into a Spec."""
    def parse(**args):
        return ipvs.parse_spec(make_module(args, ARGUMENT_SPEC).params)
    return parse


def services(make_module, items) -> dict:
    return ipvs.parse_spec(make_module({"services": items}, ARGUMENT_SPEC).params).services


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plan(case, make_module):
    before = services(make_module, case["before"])
    after = services(make_module, case["after"])
    ops = ipvs.plan(before, after, drain=case.get("drain", False))
    assert [op.text() for op in ops.all()] == case["expect"]


BAD = [
    ({"services": [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.300", "port": 80}]},
     "services[1]: address '10.0.0.300' is not an IP address"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "scheduler": "Round Robin"}]},
     "services[0] (TCP 10.0.0.1:80): scheduler 'Round Robin' is not a scheduler name"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "fd00::2", "forwarding_method": "masquerade"}]}]},
     "services[0].real_servers[0] (TCP 10.0.0.1:80) real server [fd00::2]:80: an ipv6 real server behind an ipv4 service "
     "needs forwarding_method tunnel"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1", "port": 8080}]}]},
     "services[0].real_servers[0] (TCP 10.0.0.1:80) real server 10.0.1.1:8080: only masquerade can map the service port 80"),
    ({"services": [{"address": "10.0.0.1", "port": 80}, {"protocol": "tcp", "address": "10.0.0.01", "port": 80}]},
     "is not an IP address"),
    ({"services": [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.1", "port": 80, "scheduler": "rr"}]},
     "services[1] (TCP 10.0.0.1:80) is the same service as services[0]"),
    ({"services": [{"address": "fd00::1", "port": 80}, {"address": "FD00:0::1", "port": 80}]},
     "services[1] (TCP [fd00::1]:80) is the same service as services[0]"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1"}, {"address": "10.0.1.1", "weight": 2}]}]},
     "services[0] (TCP 10.0.0.1:80): real server 10.0.1.1:80 is listed twice (real_servers[0] and real_servers[1])"),
    ({"purge": True, "services": []}, "purge: true needs purge_scope"),
    ({"purge": True, "purge_scope": {"protocols": ["tcp"]}}, "purge: true needs purge_scope"),
    ({"purge_scope": {"ports": ["32767-30000"]}}, "purge_scope.ports: '32767-30000' is outside 0-65535 or reversed"),
    ({"purge_scope": {"addresses": ["10.0.0.0/33"]}}, "purge_scope.addresses: '10.0.0.0/33' is not an IP address or network"),
    ({"services": [{"address": "10.0.0.1", "port": 0}]}, "services[0] (TCP 10.0.0.1:0): port 0 (all ports) needs persistence_timeout"),
    ({"services": [{"address": "10.0.0.1", "port": 70000}]}, "services[0] (TCP 10.0.0.1:70000): port must be 0-65535"),
    ({"services": [{"address": "10.0.0.1"}]}, "services[0] (10.0.0.1): port is required with address"),
    ({"services": [{"port": 80}]}, "services[0]: a service needs address and port, or fwmark"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "fwmark": 3}]}, "services[0]: give either address and port, or fwmark, not both"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "family": "ipv6"}]}, "services[0]: address 10.0.0.1 is ipv4, but family says ipv6"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "persistence_timeout": 60, "persistence_netmask": "255.0.255.0"}]},
     "services[0] (TCP 10.0.0.1:80).persistence_netmask: '255.0.255.0' is not an IPv4 netmask"),
    ({"services": [{"address": "fd00::1", "port": 80, "persistence_timeout": 60, "persistence_netmask": "ffff::"}]},
     "must be a prefix length 1-128 for an IPv6 service"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "scheduler": "rr", "scheduler_flags": ["sh-port"]}]},
     "services[0] (TCP 10.0.0.1:80): scheduler flag 'sh-port' does not apply to scheduler rr"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "one_packet": True}]},
     "services[0] (TCP 10.0.0.1:80): one_packet scheduling applies to UDP"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "persistence_engine": "sip"}]},
     "services[0] (TCP 10.0.0.1:80): persistence_engine sip needs persistence_timeout"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1", "upper_threshold": 5, "lower_threshold": 9}]}]},
     "real server 10.0.1.1:80: lower_threshold 9 is above upper_threshold 5"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1", "forwarding_method": "tunnel", "tunnel_type": "gue"}]}]},
     "real server 10.0.1.1:80: tunnel_type gue needs tunnel_port"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1", "tunnel_type": "gre"}]}]},
     "apply to forwarding_method tunnel only"),
    ({"services": [{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1", "weight": 70000}]}]},
     "real server 10.0.1.1:80: weight must be 0-65535"),
    ({"services": [{"fwmark": 0}]}, "services[0]: a service needs address and port, or fwmark"),
    ({"timeouts": {"tcp": 0}}, "timeouts.tcp: must be a number of seconds, 1 or more"),
    ({"persist_name": "../etc"}, "persist_name: '../etc' may hold letters, digits"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m[:60] for _a, m in BAD])
def test_bad_input_names_the_field_and_says_nothing_changed(args, message, spec_of):
    with pytest.raises(ipvs.InputError) as err:
        spec_of(**args)
    assert message in str(err.value)
    assert str(err.value).endswith("nothing was changed")


def test_defaults_follow_ipvsadm(spec_of):
    spec = spec_of(services=[{"address": "10.0.0.1", "port": 80, "real_servers": [{"address": "10.0.1.1"}]},
                             {"fwmark": 9, "real_servers": [{"address": "10.0.1.1"}]}])
    svc, mark = sorted(spec.services.values(), key=ipvs.Service.sort_key)
    assert (svc.scheduler, svc.protocol, svc.persistence_netmask) == ("wlc", "tcp", "255.255.255.255")
    assert (svc.real_servers[0].method, svc.real_servers[0].port, svc.real_servers[0].weight) == ("route", 80, 1)
    assert (mark.family, mark.protocol, mark.real_servers[0].port) == ("ipv4", "", 0)


def test_addresses_are_normalised_so_spellings_compare_equal(spec_of):
    one = spec_of(services=[{"address": "FD00:0:0::1", "port": 80, "real_servers": [{"address": "FD00::0002"}]}])
    two = spec_of(services=[{"address": "fd00::1", "port": 80, "real_servers": [{"address": "fd00::2"}]}])
    assert one.services == two.services
    assert spec_of(services=[{"address": "10.0.0.1", "port": 80, "persistence_timeout": 5,
                              "persistence_netmask": "24"}]).services == spec_of(
        services=[{"address": "10.0.0.1", "port": 80, "persistence_timeout": 5, "persistence_netmask": "255.255.255.0"}]).services


SCOPE_SERVICES = {
    "TCP 10.0.0.1:80": ipvs.Service("ipv4", "tcp", "10.0.0.1", 80),
    "UDP 10.0.0.1:53": ipvs.Service("ipv4", "udp", "10.0.0.1", 53),
    "TCP 10.0.1.1:30080": ipvs.Service("ipv4", "tcp", "10.0.1.1", 30080),
    "TCP [fd00::1]:80": ipvs.Service("ipv6", "tcp", "fd00::1", 80),
    "FWM 7": ipvs.Service("ipv4", fwmark=7),
    "FWM 150": ipvs.Service("ipv4", fwmark=150),
}


@pytest.mark.parametrize("scope,inside", [
    ({"addresses": ["10.0.0.0/24"]}, {"TCP 10.0.0.1:80", "UDP 10.0.0.1:53"}),
    ({"addresses": ["10.0.0.0/24"], "protocols": ["tcp"]}, {"TCP 10.0.0.1:80"}),
    ({"ports": ["30000-32767"]}, {"TCP 10.0.1.1:30080"}),
    ({"ports": ["80"]}, {"TCP 10.0.0.1:80", "TCP [fd00::1]:80"}),
    ({"addresses": ["fd00::/64", "10.0.1.1"], "ports": ["80", "30080"]}, {"TCP [fd00::1]:80", "TCP 10.0.1.1:30080"}),
    ({"fwmarks": ["100-199"]}, {"FWM 150"}),
    ({"fwmarks": ["7"], "addresses": ["10.0.0.1"]}, {"FWM 7", "TCP 10.0.0.1:80", "UDP 10.0.0.1:53"}),
    ({"protocols": ["udp"]}, set()),
])
def test_scope(scope, inside):
    parsed = ipvs.Scope.parse(scope)
    assert {name for name, svc in SCOPE_SERVICES.items() if parsed.matches(svc)} == inside


def test_listing_reads_like_ipvsadm(spec_of):
    spec = spec_of(services=[
        {"address": "10.0.0.1", "port": 80, "scheduler": "rr", "real_servers": [
            {"address": "10.0.1.1", "port": 8080, "forwarding_method": "masquerade", "weight": 3},
            {"address": "10.0.1.2", "port": 8080, "forwarding_method": "masquerade", "upper_threshold": 100, "lower_threshold": 10}]},
        {"protocol": "udp", "address": "10.0.0.2", "port": 53, "scheduler": "sh", "scheduler_flags": ["sh-port"],
         "one_packet": True, "real_servers": [{"address": "10.0.1.3", "forwarding_method": "tunnel", "tunnel_type": "gre",
                                               "tunnel_checksum": "remcsum"}]},
    ])
    assert ipvs.render_listing(spec.services.values()) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight\n"
        "TCP  10.0.0.1:80 rr\n"
        # the columns of ipvsadm -Ln (tests/unit/fixtures/ipvs/ipvsadm-Ln.txt), counters left out
        "  -> 10.0.1.1:8080                Masq    3\n"
        "  -> 10.0.1.2:8080                Masq    1    uthreshold 100 lthreshold 10\n"
        "UDP  10.0.0.2:53 sh (sh-port) ops\n"
        "  -> 10.0.1.3:53                  Tunnel  1    tunnel gre:r\n"
    )


# ---- the backend on this machine: its kernel has no IPVS, no loadable modules ----

def backend(make_module, tmp_path, check_mode=True, **args):
    module = make_module(args, ARGUMENT_SPEC, check_mode=check_mode, diff=True)
    return ipvs.ServicesBackend(module, Runner(module), module.params, root=str(tmp_path))


API = {"address": "169.254.20.10", "port": 6443, "scheduler": "rr", "real_servers": [
    {"address": "192.0.2.11", "forwarding_method": "masquerade"}, {"address": "192.0.2.12", "forwarding_method": "masquerade"}]}


@pytest.mark.skipif(ipvs.ipvs_loaded(), reason="this machine has IPVS")
def test_without_ip_vs_nothing_is_read_or_loaded_and_the_state_is_said_honestly(make_module, tmp_path):
    be = backend(make_module, tmp_path, services=[API], timeouts={"udp": 30})
    before = be.current()
    assert before.services == {} and before.loaded is False and before.timeouts == ipvs.DEFAULT_TIMEOUTS
    after = be.desired(before)
    text = be.render(before)
    assert text.startswith("# ip_vs is not loaded: no services\n") and "Timeout (tcp tcpfin udp): 900 120 300" in text
    assert "TCP  169.254.20.10:6443 rr" in be.render(after) and "Timeout (tcp tcpfin udp): 900 120 30" in be.render(after)
    assert not ipvs.ipvs_loaded()


@pytest.mark.skipif(ipvs.ipvs_loaded(), reason="this machine has IPVS")
def test_check_mode_fails_like_the_real_run_when_the_kernel_cannot_load_ip_vs(make_module, tmp_path):
    be = backend(make_module, tmp_path, services=[API], persist=True)
    with pytest.raises(ipvs.IPVSError, match=r"the kernel cannot load ip_vs \(kernel .*\); nothing was changed"):
        converge(be, check_mode=True, diff=True)
    assert not list(tmp_path.rglob("*")), "nothing may be written"
    # the native dry run ran (modprobe --dry-run), never a real modprobe
    runs = [argv for argv in be.runner.history if argv[0].endswith("modprobe")]
    assert runs == ([[shutil.which("modprobe"), "--dry-run", "--quiet", "ip_vs"]] if shutil.which("modprobe") else [])


@pytest.mark.skipif(ipvs.ipvs_loaded(), reason="this machine has IPVS")
def test_nothing_asked_nothing_done_even_without_ip_vs(make_module, tmp_path):
    result = converge(backend(make_module, tmp_path, check_mode=False), check_mode=False, diff=True)
    assert result["changed"] is False and result["operations"] == [] and result["ipvs_loaded"] is False


def test_persistence_files_hold_the_owned_services_in_ipvsadm_save_format(make_module, tmp_path):
    be = backend(make_module, tmp_path, services=[API, {"address": "10.0.0.9", "port": 80, "state": "absent"}],
                 timeouts={"tcp": 600, "tcp_fin": 60, "udp": 60}, persist=True, persist_name="apiserver")
    after = be.desired(ipvs.State(services={}, timeouts=ipvs.DEFAULT_TIMEOUTS))
    rules = tmp_path / "etc/kubenode-dataplane/ipvs/apiserver.rules"
    unit = tmp_path / "etc/systemd/system/kubenode-ipvs-restore@.service"
    link = tmp_path / "etc/systemd/system/sysinit.target.wants/kubenode-ipvs-restore@apiserver.service"
    assert after.files[str(rules)] == (
        "-A -t 169.254.20.10:6443 -s rr\n"
        "-a -t 169.254.20.10:6443 -r 192.0.2.11:6443 -m -w 1\n"
        "-a -t 169.254.20.10:6443 -r 192.0.2.12:6443 -m -w 1\n"
        "--set 600 60 60\n"
    )
    text = after.files[str(unit)]
    assert "StandardInput=file:/etc/kubenode-dataplane/ipvs/%i.rules\n" in text
    assert "ExecStart=" in text and text.split("ExecStart=")[1].split()[1] == "--restore"
    assert after.links == {str(link): "/etc/systemd/system/kubenode-ipvs-restore@.service"}
    be.write_files(ipvs.State(services={}), after)
    assert rules.read_text() == after.files[str(rules)] and unit.read_text() == text
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/kubenode-ipvs-restore@.service"
    # read back: equal, so a second run writes nothing
    again = ipvs.State(services={}, timeouts=ipvs.DEFAULT_TIMEOUTS)
    again.files = {p: ipvs._read_file(p) for p in after.files}
    again.links = {p: ipvs._read_link(p) for p in after.links}
    assert (again.files, again.links) == (after.files, after.links)


def test_kube_proxy_services_are_refused_unless_included(make_module, tmp_path):
    be = backend(make_module, tmp_path, services=[{"address": "10.96.0.1", "port": 443, "scheduler": "rr"}])
    be.kube_addresses = {"10.96.0.1"}
    with pytest.raises(ipvs.InputError, match=r"services\[0\] \(TCP 10.96.0.1:443\): 10.96.0.1 is bound to kube-ipvs0, so this "
                                              r"service is kube-proxy's; set include_kube_proxy: true"):
        be.desired(ipvs.State(services={}))
    be = backend(make_module, tmp_path, services=[{"address": "10.96.0.1", "port": 443}], include_kube_proxy=True)
    be.kube_addresses = {"10.96.0.1"}
    assert len(be.desired(ipvs.State(services={})).services) == 1


def test_purge_view_leaves_kube_proxy_and_out_of_scope_services_out(make_module, tmp_path):
    be = backend(make_module, tmp_path, services=[API], purge=True, purge_scope={"addresses": ["169.254.0.0/16", "10.96.0.0/12"]})
    be.kube_addresses = {"10.96.0.1"}
    assert be.in_view(ipvs.Service("ipv4", "tcp", "169.254.20.10", 6443))
    assert be.in_view(ipvs.Service("ipv4", "tcp", "169.254.9.9", 80))
    assert not be.in_view(ipvs.Service("ipv4", "tcp", "10.96.0.1", 443))  # kube-proxy's, inside the scope
    assert be.in_view(ipvs.Service("ipv4", "tcp", "10.96.0.2", 443))  # inside the scope, not on kube-ipvs0
    assert not be.in_view(ipvs.Service("ipv4", "tcp", "192.0.2.1", 80))
    before = ipvs.State(services={s.key: s for s in (ipvs.Service("ipv4", "tcp", "169.254.9.9", 80),)})
    after = be.desired(before)
    assert [s.label for s in after.services.values()] == ["TCP 169.254.20.10:6443"]
