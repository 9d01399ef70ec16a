"""The IPVS netlink codec against replies captured from a real kernel (Debian 12, Linux 6.1) and against the
ipvsadm output of the same services (tests/unit/fixtures/ipvs/capture.sh made both in the test VM)."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils import _ipvs as ipvs

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ipvs"
CAPTURE = json.loads((FIXTURES / "netlink-replies.json").read_text())


def payload(hexmsg: str) -> bytes:
    """The attributes of a captured generic netlink message (after the netlink and genl headers)."""
    return bytes.fromhex(hexmsg)[20:]


def captured() -> list:
    out = []
    for entry in CAPTURE["servers"]:
        svc, stats = ipvs.decode_service(payload(entry["service"]))
        servers = [ipvs.decode_server(payload(raw), svc.family) for raw in entry["replies"]]
        svc = ipvs.replace(svc, real_servers=tuple(sorted((pair[0] for pair in servers), key=ipvs.RealServer.sort_key)))
        out.append((svc, stats, dict((rs.key, counters) for rs, counters in servers)))
    return out


SERVICES = [entry[0] for entry in captured()]


def ipvsadm_listing(name: str) -> dict:
    """ipvsadm -Ln style output as {service line: [real server columns]}."""
    out: dict = {}
    current = None
    for line in (FIXTURES / name).read_text().splitlines()[3:]:
        if line.startswith("  -> "):
            out[current].append(line[5:].split())
        else:
            current = " ".join(line.split())
            out[current] = []
    return out


def test_every_captured_service_and_real_server_is_decoded():
    assert len(SERVICES) == len(CAPTURE["services"]) == 11
    assert sum(len(s.real_servers) for s in SERVICES) == 13


def test_save_format_matches_ipvsadm_save_of_the_same_kernel_state():
    ours = ipvs.render_save(SERVICES, thresholds=False).splitlines()
    theirs = (FIXTURES / "ipvsadm-save.txt").read_text().splitlines()
    assert sorted(ours) == sorted(theirs)
    # services in ipvsadm's order; real servers follow their own service
    assert [line for line in ours if line.startswith("-A")] == [line for line in theirs if line.startswith("-A")]


def test_service_lines_match_ipvsadm_list():
    listing = ipvsadm_listing("ipvsadm-Ln.txt")
    assert [" ".join(ipvs.service_line(s).split()) for s in ipvs.sort_services(SERVICES)] == list(listing)


def test_forwarding_method_and_weight_of_every_real_server_match_ipvsadm():
    # pyroute2 0.9.7's IPVSDest.from_message reports method 3 for all of them; we read the raw attribute
    listing = ipvsadm_listing("ipvsadm-Ln.txt")
    for svc in SERVICES:
        columns = listing[" ".join(ipvs.service_line(svc).split())]
        ours = [[ipvs.bracket(rs.address, rs.port), ipvs.METHOD_TEXT[rs.method], str(rs.weight)] for rs in svc.real_servers]
        assert sorted(ours) == sorted(c[:3] for c in columns), svc.label


def test_thresholds_match_ipvsadm_list_thresholds():
    listing = ipvsadm_listing("ipvsadm-Ln-thresholds.txt")
    for svc in SERVICES:
        columns = listing[" ".join(ipvs.service_line(svc).split())]
        ours = [[ipvs.bracket(rs.address, rs.port), str(rs.upper_threshold), str(rs.lower_threshold)] for rs in svc.real_servers]
        assert sorted(ours) == sorted(c[:3] for c in columns), svc.label
    by_name = {s.label: s for s in SERVICES}
    assert {rs.address: (rs.upper_threshold, rs.lower_threshold) for rs in by_name["TCP 10.0.0.1:80"].real_servers} == {
        "10.0.1.1": (0, 0), "10.0.1.2": (100, 10)}


def test_tunnel_settings_match_ipvsadm_tun_info():
    listing = ipvsadm_listing("ipvsadm-Ln-tun-info.txt")
    for svc in SERVICES:
        columns = listing[" ".join(ipvs.service_line(svc).split())]
        ours = [[ipvs.bracket(rs.address, rs.port), rs.tunnel_text() or "n/a"] for rs in svc.real_servers]
        assert sorted(ours) == sorted([c[0], c[2]] for c in columns), svc.label
    servers = {rs.address: rs for rs in {s.label: s for s in SERVICES}["TCP 10.0.0.3:443"].real_servers}
    assert (servers["10.0.1.5"].tunnel_type, servers["10.0.1.5"].tunnel_port, servers["10.0.1.5"].tunnel_checksum) == ("gue", 6080, "nocsum")
    assert (servers["10.0.1.10"].tunnel_type, servers["10.0.1.10"].tunnel_checksum) == ("gre", "csum")


def test_persistence_flags_and_families_are_decoded():
    by_name = {s.label: s for s in SERVICES}
    v6 = by_name["TCP [fd00::1]:80"]
    assert (v6.family, v6.persistence_timeout, v6.persistence_netmask) == ("ipv6", 300, "64")
    mixed = {rs.address: rs for rs in v6.real_servers}
    assert mixed["10.0.1.8"].family == "ipv4" and mixed["10.0.1.8"].method == "tunnel"
    assert by_name["TCP 10.0.0.3:443"].persistence_netmask == "255.255.255.0"
    # no persistence: the netmask is normalised away, whatever the kernel keeps
    assert by_name["TCP 10.0.0.1:80"].persistence_netmask == ipvs.FULL_V4_MASK
    sip = by_name["UDP 10.0.0.6:5060"]
    assert (sip.persistence_engine, sip.one_packet, sip.persistence_timeout) == ("sip", True, 60)
    sh = by_name["UDP 10.0.0.2:53"]
    assert sh.flag_names() == ["sh-fallback", "sh-port"] and sh.one_packet
    assert by_name["TCP 10.0.0.8:80"].flag_names() == ["flag-3"]
    assert by_name["SCTP 10.0.0.4:3868"].flag_names() == ["mh-port"]
    assert (by_name["FWM 8 IPv6"].fwmark, by_name["FWM 8 IPv6"].family) == (8, "ipv6")
    assert {rs.weight for rs in by_name["TCP 10.0.0.5:80"].real_servers} == {0}


def test_counters_are_kept_apart_from_the_compared_state():
    for _svc, stats, servers in captured():
        assert set(stats) == set(ipvs.STATS_NAMES)
        for counters in servers.values():
            assert counters["active_connections"] == 0 and "stats" in counters


def test_timeouts_and_info_replies():
    config = ipvs.parse_attrs(payload(CAPTURE["config"][0]))
    assert (ipvs._get_u32(config, ipvs.CMD_ATTR_TIMEOUT_TCP), ipvs._get_u32(config, ipvs.CMD_ATTR_TIMEOUT_TCP_FIN),
            ipvs._get_u32(config, ipvs.CMD_ATTR_TIMEOUT_UDP)) == (901, 121, 301)
    info = ipvs.parse_attrs(payload(CAPTURE["info"][0]))
    assert ipvs._get_u32(info, ipvs.INFO_VERSION) == 0x010201
    assert ipvs._get_u32(info, ipvs.INFO_CONN_TAB_SIZE) == 4096


@pytest.mark.parametrize("svc", SERVICES, ids=[s.label for s in SERVICES])
def test_service_key_is_packed_as_the_kernel_packs_it(svc):
    # the kernel's reply starts with the key attributes, in the same layout as our requests
    nested = ipvs.parse_attrs(payload(next(e["service"] for e in CAPTURE["servers"]
                                           if ipvs.decode_service(payload(e["service"]))[0].key == svc.key)))
    inner = nested[ipvs.CMD_ATTR_SERVICE]
    ours = ipvs.service_key_attrs(svc)
    assert inner[:len(ours)] == ours


@pytest.mark.parametrize("svc", SERVICES, ids=[s.label for s in SERVICES])
def test_requests_decode_with_pyroute2_and_round_trip(svc):
    pytest.importorskip("pyroute2")
    from pyroute2.netlink.generic.ipvs import ipvsmsg

    cmd, attrs = ipvs.op_payload(ipvs.Op("add-service", svc))
    raw = struct.pack("=IHHII", 20 + len(attrs), 34, 5, 1, 0) + struct.pack("=BBH", cmd, 1, 0) + attrs
    msg = ipvsmsg(raw)
    msg.decode()
    fields = dict(msg.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
    assert fields["IPVS_SVC_ATTR_AF"] == ipvs.FAMILIES[svc.family]
    assert fields["IPVS_SVC_ATTR_SCHED_NAME"] == svc.scheduler
    assert fields["IPVS_SVC_ATTR_TIMEOUT"] == svc.persistence_timeout
    assert fields["IPVS_SVC_ATTR_FLAGS"]["flags"] == svc.kernel_flags()
    if svc.fwmark:
        assert fields["IPVS_SVC_ATTR_FWMARK"] == svc.fwmark
    else:
        assert fields["IPVS_SVC_ATTR_PORT"] == svc.port
        assert fields["IPVS_SVC_ATTR_PROTOCOL"] == ipvs.PROTOCOLS[svc.protocol]
    if svc.family == "ipv4":
        assert fields["IPVS_SVC_ATTR_NETMASK"] == svc.persistence_netmask
    # our own decoder reads our request as the kernel's reply (same attribute layout)
    assert ipvs.decode_service(attrs)[0] == svc.without_servers()
    for rs in svc.real_servers:
        cmd, attrs = ipvs.op_payload(ipvs.Op("add-server", svc, rs))
        assert cmd == ipvs.CMD_NEW_DEST
        assert ipvs.decode_server(attrs, svc.family)[0] == rs
        raw = struct.pack("=IHHII", 20 + len(attrs), 34, 5, 1, 0) + struct.pack("=BBH", cmd, 1, 0) + attrs
        msg = ipvsmsg(raw)
        msg.decode()
        dest = dict(msg.get_attr("IPVS_CMD_ATTR_DEST")["attrs"])
        assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == ipvs.METHODS[rs.method]
        assert dest["IPVS_DEST_ATTR_WEIGHT"] == rs.weight
        assert dest["IPVS_DEST_ATTR_PORT"] == rs.port
        assert dest["IPVS_DEST_ATTR_ADDR_FAMILY"] == (socket.AF_INET6 if ":" in rs.address else socket.AF_INET)


def test_ipv6_netmask_is_a_host_order_prefix_length():
    svc = ipvs.Service(family="ipv6", protocol="tcp", address="fd00::1", port=80, persistence_timeout=300,
                       persistence_netmask="64").normalised()
    attrs = ipvs.parse_attrs(ipvs.service_full_attrs(svc))
    assert struct.unpack("=I", attrs[ipvs.SVC_NETMASK])[0] == 64


# ---- the family id, asked of this machine's real generic netlink controller (no IPVS in this kernel)
@pytest.mark.parametrize("family", ["nlctrl", "ethtool", "TASKSTATS"])
def test_family_ids_are_the_ones_pyroute2_resolves(family):
    pytest.importorskip("pyroute2")
    from pyroute2.netlink import genlmsg
    from pyroute2.netlink.generic import GenericNetlinkSocket
    sock = GenericNetlinkSocket()
    try:
        sock.bind(family, genlmsg)
        expected = sock.prid
    finally:
        sock.close()
    assert ipvs.resolve_family(name=family) == expected


def test_a_kernel_without_ipvs_answers_enoent_in_one_sentence():
    if os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has IPVS")
    with pytest.raises(ipvs.IPVSError, match=r"^IPVS is not available in this kernel \(generic netlink family 'IPVS' "
                                             r"not found: No such file or directory\)$"):
        ipvs.resolve_family()


def test_the_lookup_is_one_request_on_the_callers_socket():
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ipvs.NETLINK_GENERIC)
    sock.bind((0, 0))
    try:
        assert ipvs.resolve_family(sock, name="nlctrl") == ipvs.GENL_ID_CTRL
        assert sock.fileno() >= 0, "a socket the caller gave stays open"
    finally:
        sock.close()
    request = ipvs.family_request("IPVS", seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), ipvs.GENL_ID_CTRL, ipvs.NLM_F_REQUEST, 7)
    assert request[20:].startswith(struct.pack("=HH", 9, ipvs.CTRL_ATTR_FAMILY_NAME) + b"IPVS\0")
    with pytest.raises(ipvs.IPVSError, match="short reply"):
        ipvs.parse_family_reply(b"\0" * 8)
