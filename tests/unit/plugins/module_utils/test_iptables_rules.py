"""The normaliser maps user spellings to what the kernel prints, proven against captured
iptables-save output of both backends (tests/unit/fixtures/iptables/spellings.json, written
by capture.py in that folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils import _iptables_rules as r

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "iptables"
DOC = json.loads((FIXTURES / "spellings.json").read_text())
CASES = [
    pytest.param(c["family"], c["spec"], backend, c[backend], id=f"{backend}:{c['family']}:{c['spec']}")
    for c in DOC["cases"] for backend in ("nft", "legacy") if isinstance(c[backend], list)
]


def test_fixture_is_a_real_capture():
    assert "iptables v1.8" in DOC["iptables"]
    assert len(CASES) > 250
    # a few answers that only the kernel could have given
    by_spec = {c["spec"]: c for c in DOC["cases"]}
    assert by_spec["-p tcp --dport ssh -j ACCEPT"]["nft"] == ["-p tcp -m tcp --dport 22 -j ACCEPT"]
    assert by_spec["-m limit --limit 60/min -j ACCEPT"]["legacy"] == ["-m limit --limit 1/sec -j ACCEPT"]


@pytest.mark.parametrize("family,spec,backend,saved", CASES)
def test_normalise_gives_what_iptables_save_prints(family, spec, backend, saved):
    assert r.normalise(spec, family, backend) == saved


@pytest.mark.parametrize("family,spec,backend,saved", CASES)
def test_saved_form_is_a_fixed_point(family, spec, backend, saved):
    for line in saved:
        assert r.normalise(line, family, backend) == [line]


def test_nothing_is_reported_as_an_error_that_the_kernel_took():
    errors = [c for c in DOC["cases"] if isinstance(c["nft"], dict) != isinstance(c["legacy"], dict)]
    assert errors == []


SHAPES = [
    "-s {a} -p tcp --dport {p} -j ACCEPT",
    "-s {a}/24 -d {b} -p udp -m udp --sport {p} --dport {q}:{r} -m comment --comment x -j DROP",
    "! -s {a} -p tcp -m conntrack --ctstate NEW --dport {p} -j REJECT",
    "-p tcp --dport {p} -s {a}/255.255.0.0 -j LOG --log-prefix 'a b: '",
    "-d {a}/0 -p tcp --dport {p}:{p} -j ACCEPT",
    "-s {a},{b} -p tcp --dport {p} -j ACCEPT",
    "-p tcp --dport 0{p} -j ACCEPT",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_cache_gives_what_the_full_normaliser_gives(shape):
    import random
    rnd = random.Random(shape)
    for _round in range(50):
        values = {
            "a": ".".join(str(rnd.randrange(256)) for _octet in range(4)),
            "b": ".".join(str(rnd.randrange(256)) for _octet in range(4)),
            "p": str(rnd.randrange(1, 30000)), "q": str(rnd.randrange(1, 30000)), "r": str(rnd.randrange(30000, 65536)),
        }
        spec = shape.format(**values)
        for backend in ("nft", "legacy"):
            assert r.normalise(spec, "ipv4", backend) == r._normalise(r.split_words(spec), "ipv4", backend), spec


def test_structured_rules_render_to_the_canonical_text():
    cases = [
        ({"protocol": "tcp", "dport": 22, "source": "10.0.0.0/8", "comment": "ssh from the LAN", "jump": "ACCEPT"}, "ipv4",
         '-s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment "ssh from the LAN" -j ACCEPT'),
        ({"protocol": "udp", "dport": [53, "domain", "1000:2000"], "jump": "REJECT"}, "ipv6",
         "-p udp -m multiport --dports 53,53,1000:2000 -j REJECT --reject-with icmp6-port-unreachable"),
        ({"ctstate": ["ESTABLISHED", "RELATED"], "jump": "ACCEPT"}, "ipv4",
         "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ({"in_interface": "!eth0", "protocol": "icmp", "icmp_type": "echo-request", "limit": "60/minute", "jump": "ACCEPT"},
         "ipv4", "! -i eth0 -p icmp -m icmp --icmp-type 8 -m limit --limit 1/sec -j ACCEPT"),
        ({"protocol": "ipv6-icmp", "icmp_type": "neighbour-solicitation", "jump": "ACCEPT"}, "ipv6",
         "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT"),
        ({"jump": "LOG", "log_prefix": "fw drop: ", "log_level": "info"}, "ipv4",
         '-j LOG --log-prefix "fw drop: " --log-level 6'),
        ({"protocol": "tcp", "dport": 80, "jump": "DNAT", "to_destination": "10.0.0.1:8080"}, "ipv4",
         "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8080"),
        ({"jump": "MARK", "set_mark": "0x4000/0x4000"}, "ipv4", "-j MARK --set-xmark 0x4000/0x4000"),
        ({"goto": "KUBENODE-X", "source": "! 192.0.2.1"}, "ipv4", "! -s 192.0.2.1/32 -g KUBENODE-X"),
    ]
    for rule, family, text in cases:
        assert r.normalise(r.structured_words(rule, family), family) == [text], rule


@pytest.mark.parametrize("rule,message", [
    ({"protocol": "tcp", "dprot": 22}, "$.x.dprot: unknown key"),
    ({"dport": 22, "jump": "ACCEPT"}, "$.x.dport: ports need protocol"),
    ({"protocol": "tcp", "icmp_type": 8}, "$.x.icmp_type: needs protocol icmp"),
    ({"jump": "ACCEPT", "goto": "X"}, "$.x: a rule has a jump or a goto, not both"),
    ({"reject_with": "tcp-reset"}, "$.x: target options need a jump"),
])
def test_structured_rule_errors_name_the_field(rule, message):
    with pytest.raises(r.SpecError) as err:
        r.structured_words(rule, "ipv4", "$.x")
    assert str(err.value).startswith(message)


def test_split_words_reads_shell_and_iptables_save_quoting():
    assert r.split_words("-m comment --comment 'a b' -j ACCEPT") == ["-m", "comment", "--comment", "a b", "-j", "ACCEPT"]
    assert r.split_words(r'-m comment --comment "it\'s \"q\"" -j X') == ["-m", "comment", "--comment", "it's \"q\"", "-j", "X"]
    assert r.split_words('--comment ""') == ["--comment", ""]
    with pytest.raises(r.SpecError):
        r.split_words("--comment 'open")


def test_the_published_schema_is_the_modules_schema():
    published = json.loads((Path(__file__).resolve().parents[4] / "docs" / "schemas" / "iptables_ruleset.schema.json").read_text())
    assert published == r.schema()


CORPUS = json.loads((Path(__file__).resolve().parents[3] / "netns" / "iptables_corpus.captured.json").read_text())


@pytest.mark.parametrize("spec", ["-c 2,3 -j ACCEPT", "-c 2 3 -j ACCEPT", "--set-counters 5 6 -j DROP"])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rule_counters_are_no_part_of_the_printed_rule(spec, backend):
    # the fallback where no scratch namespace can be made: what iptables-save printed in the corpus capture
    saved = CORPUS["results"][backend]["ipv4"][f"{spec}|filter|INPUT"]["saved"]
    assert r.normalise(spec, "ipv4", backend) == saved
