"""The nft backend's parsers and rewrites, on real nft output captured by tests/unit/fixtures/nft/capture.sh."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.stock_files import debian_nftables_conf

from ansible_collections.kubenode.dataplane.plugins.module_utils import _nfgen as nfgen
from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft as nft
from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft_schema as schema

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "nft"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


# ---------------------------------------------------------------- the kernel's listing


def test_traffic_changes_only_what_normalise_removes():
    after = nft.split_listing(fixture("rich.after-traffic.txt"))["inet knrich"]
    fresh = nft.split_listing(fixture("rich.fresh.txt"))["inet knrich"]
    assert after != fresh  # counters, quota usage and a learnt element differ in the raw text
    assert "expires" in after and "used 87 bytes" in after and "packets 3 bytes 87" in after
    assert nft.normalise(after) == nft.normalise(fresh)
    assert nft.compare_key(nft.normalise(after)) == nft.compare_key(nft.normalise(fresh))


def test_normalise_keeps_what_the_ruleset_says():
    norm = nft.normalise(nft.split_listing(fixture("rich.after-traffic.txt"))["inet knrich"])
    # static elements, the quota's limit, the rule's own timeout and comments stay
    assert "elements = { 198.51.100.3, 198.51.100.7," in norm
    assert "quota 5 mbytes counter packets 0 bytes 0" in norm
    assert "add @seen { ip saddr timeout 10m }" in norm
    assert 'comment "dns and ntp"' in norm
    # the dynamic set keeps its definition, not what the packet path put in it
    assert "flags dynamic,timeout" in norm and "192.0.2.2" not in norm.split("set seen")[1].split("}")[0]


def test_counter_text_inside_a_comment_is_left_alone():
    text = 'table inet t {\n\tchain c {\n\t\tcounter packets 4 bytes 9 accept comment "counter packets 4 bytes 9"\n\t}\n}\n'
    assert nft.normalise(text) == (
        'table inet t {\n\tchain c {\n\t\tcounter packets 0 bytes 0 accept comment "counter packets 4 bytes 9"\n\t}\n}\n'
    )


def test_order_of_chains_and_sets_is_not_significant_but_rule_order_is():
    a = "table inet t {\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\n\tchain a {\n\t\taccept\n\t}\n\n\tchain b {\n\t\tdrop\n\t}\n}\n"
    b = "table inet t {\n\tchain b {\n\t\tdrop\n\t}\n\n\tset s {\n\t\ttype ipv4_addr\n\t}\n\n\tchain a {\n\t\taccept\n\t}\n}\n"
    c = a.replace("\t\taccept\n", "\t\tdrop\n\t\taccept\n").replace("\t\tdrop\n\t}\n}", "\t\taccept\n\t\tdrop\n\t}\n}")
    assert nft.compare_key(nft.normalise(a)) == nft.compare_key(nft.normalise(b))
    assert nft.compare_key(nft.normalise(a)) != nft.compare_key(nft.normalise(c))


def test_split_listing_of_foreign_tables():
    kp = nft.split_listing(fixture("kube-proxy.txt"))
    assert list(kp) == ["ip kube-proxy"]
    blocks = [key for key, _lines in nft._blocks(kp["ip kube-proxy"])[2]]
    assert blocks == ["set cluster-ips", "map service-ips", "chain services", "chain filter-input",
                      "chain firewall-check", "chain nat-prerouting"]
    assert nft.split_listing(fixture("iptables-nft-filter.txt")).keys() == {"ip filter"}
    assert nft.IPTABLES_NFT_WARNING in fixture("iptables-nft-filter.stderr.txt")


# ---------------------------------------------------------------- the script lexer


def test_tables_named_by_a_script_and_their_lines():
    script = (
        "define ports = { 22, 80 }  # a comment with table ip kube-proxy in it\n"
        'table inet a {\n\tchain c {\n\t\ttcp dport $ports accept comment "flush ruleset; table ip x"\n\t}\n}\n'
        "add rule inet a c udp dport 53 accept; add element ip6 b s { ::1 }\n"
        "table c\n"
        "add ct helper inet a ftp { type \"ftp\" protocol tcp; }\n"
    )
    assert nft.tables_named(script) == ["inet a", "ip6 b", "ip c"]
    lines = [(st.line, st.tokens[0]) for st in nft.statements(script)]
    assert lines == [(1, "define"), (2, "table"), (7, "add"), (7, "add"), (8, "table"), (9, "add")]


@pytest.mark.parametrize("script, problem", [
    ("flush ruleset\n", "content line 1: 'flush ruleset' would delete every table"),
    ("table inet a {\n}\ninclude \"/etc/x.nft\"\n", "content line 3: 'include' is not a definition"),
    ("list ruleset\n", "content line 1: 'list' is not a definition"),
    ("table inet $t {\n}\n", "the table name '$t' must be written literally"),
])
def test_scripts_reaching_beyond_their_tables_are_refused(script, problem):
    with pytest.raises(nft.ScriptError, match="nothing was changed") as err:
        nft.tables_named(script)
    assert problem in str(err.value)


def test_options_keep_content_to_the_listed_tables():
    with pytest.raises(nft.ScriptError, match="names the table.s. ip kube-proxy which tables does not list"):
        nft.options_from_params({"content": "table inet a {\n}\ndelete table ip kube-proxy\n", "tables": ["inet a"]})
    opts = nft.options_from_params({"content": "table inet a {\n}\n"})
    assert opts.tables == ["inet a"] and opts.label == "content"
    with pytest.raises(nft.ScriptError, match="is not a table reference"):
        nft.options_from_params({"tables": ["kubenode_firewall"], "state": "absent"})


# ---------------------------------------------------------------- stand-in interfaces, from nft's own words


def test_missing_interfaces_are_the_tokens_nft_marks():
    # the first missing name of the set and of the concatenation, never the '.' between them
    err = fixture("ifaces.round1.stderr.txt")
    assert nft.missing_interfaces(err, "ifaces.input.nft") == ["lan0"]
    assert nft.missing_interfaces(fixture("ifaces.round2.stderr.txt"), "ifaces.input.nft") == ["lan1", "eth0"]
    assert nft.missing_interfaces(fixture("long-name.stderr.txt"), "long-name.input.nft") == ["averyveryverylongname0"]
    # only the errors in the script itself, and only this error
    assert nft.missing_interfaces(err, "other.nft") == []
    assert nft.missing_interfaces(fixture("bad-rule.stderr.txt"), "bad-rule.input.nft") == []
    assert nft.missing_interfaces(fixture("flowtable.round1.stderr.txt"), "flowtable.input.nft") == []


def test_missing_interfaces_after_multibyte_characters():
    # nft writes its marks byte by byte under the line: "préfixe→" is 8 characters and 11 bytes
    err = fixture("utf8-line.stderr.txt")
    assert nft.missing_interfaces(err, "utf8-line.input.nft") == ["eth1"]


def test_hook_devices_from_nfts_parse():
    assert nft.hook_devices(fixture("flowtable.debug-netlink.txt")) == ["lan1", "lan0"]
    debug = ("netdev (null) (null) use 0 type filter hook ingress prio 0 packets 0 bytes 0 dev dev0 \n"
             "netdev (null) (null) use 0 type filter hook ingress prio 0 packets 0 bytes 0 dev {  dev2  dev1  } \n"
             "netdev n ing\n  [ meta load iif => reg 1 ]\n  [ cmp eq reg 1 0x00000001 ]\n\n"
             "inet (null) (null) use 0\n\telement 04030201  : 0 [end]\n")
    assert nft.hook_devices(debug) == ["dev0", "dev2", "dev1"]


def test_nft_errors_point_at_the_users_lines():
    err = fixture("bad-rule.stderr.txt")
    mapped = nft.map_nft_error("In file included from /tmp/x/tx.nft:3:1-20:\n" + err, {"bad-rule.input.nft": "content"})
    assert mapped.splitlines()[0] == "content:4:21-21: Error: syntax error, unexpected newline"
    assert "In file included" not in mapped and "acept" in mapped


# ---------------------------------------------------------------- persistence


def test_debian_stock_conf_stops_flushing_and_includes_the_owned_tables():
    stock = debian_nftables_conf()
    assert "\nflush ruleset\n" in stock
    out = nft.managed_conf(stock, "/etc/nftables.d/kubenode-*.nft")
    assert not [ln for ln in out.splitlines() if ln.strip() == "flush ruleset"]
    lines = out.splitlines()
    # the stock table is replaced on its own, before it is defined again, and ours are included last
    assert lines.index("delete table inet filter") < lines.index("table inet filter {")
    assert lines[-2] == 'include "/etc/nftables.d/kubenode-*.nft"'
    assert "chain input {" in out and out.startswith("#!/usr/sbin/nft -f\n")
    assert nft.managed_conf(out, "/etc/nftables.d/kubenode-*.nft") == out


def test_conf_without_flush_or_missing_only_gets_the_include():
    assert nft.managed_conf(None, "/d/kubenode-*.nft") == (
        "#!/usr/sbin/nft -f\n\n" + nft.CONF_INCLUDE_BEGIN + "\n# the tables owned by kubenode.dataplane.nft_ruleset, one file each\n"
        'include "/d/kubenode-*.nft"\n' + nft.CONF_END + "\n"
    )
    own = "table ip mine {\n\tchain c {\n\t}\n}\n"
    out = nft.managed_conf(own, "/d/kubenode-*.nft")
    assert out.startswith(own) and "delete table" not in out


def test_table_file_replaces_only_its_table():
    text = nft.table_file_text("inet kubenode_firewall", "table inet kubenode_firewall {\n}\n")
    assert [s.tokens[:3] for s in nft.statements(text)] == [
        ["table", "inet", "kubenode_firewall"], ["delete", "table", "inet"], ["table", "inet", "kubenode_firewall"]]


# ---------------------------------------------------------------- the structured form


def test_schema_reports_every_error_with_its_json_path():
    broken = [{"family": "inet6", "name": "bad name", "extra": 1,
               "sets": [{"name": "s"}],
               "chains": [{"name": "input", "hook": "inptu", "policy": "maybe", "rules": ["ok", "two\nlines"]}]}]
    problems = schema.validate(broken)
    paths = sorted({p.split(":", 1)[0] for p in problems})
    assert paths == [
        "$.ruleset[0]", "$.ruleset[0].chains[0]", "$.ruleset[0].chains[0].hook", "$.ruleset[0].chains[0].policy",
        "$.ruleset[0].chains[0].rules[1]", "$.ruleset[0].family", "$.ruleset[0].name", "$.ruleset[0].sets[0]",
    ], problems


def test_schema_checks_names_are_unique():
    dup = [{"family": "inet", "name": "t", "chains": [{"name": "c"}, {"name": "c"}]}, {"family": "inet", "name": "t"}]
    assert schema.validate(dup) == [
        "$.ruleset[0].chains[1].name: 'c' is already defined in this table",
        "$.ruleset[1].name: table inet t is already defined at $.ruleset[0]",
    ]


def test_render_structured_ruleset():
    ruleset = [{
        "family": "inet", "name": "edge", "comment": "edge",
        "sets": [{"name": "blocked", "type": "ipv4_addr", "flags": ["interval"], "elements": ["203.0.113.0/24"]}],
        "maps": [{"name": "ports", "type": "inet_service", "value": "verdict", "elements": [{"key": 22, "value": "accept"}]}],
        "counters": [{"name": "dropped"}],
        "chains": [{"name": "input", "type": "filter", "hook": "input", "priority": "filter - 5", "policy": "drop",
                    "rules": ["ct state established accept", {"rule": "tcp dport vmap @ports", "comment": "ports"}]}],
    }]
    assert schema.validate(ruleset) == []
    assert schema.render(ruleset) == (
        "table inet edge {\n"
        '\tcomment "edge"\n'
        "\tcounter dropped {\n\t}\n"
        "\tset blocked {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 203.0.113.0/24 }\n\t}\n"
        "\tmap ports {\n\t\ttype inet_service : verdict\n\t\telements = { 22 : accept }\n\t}\n"
        "\tchain input {\n\t\ttype filter hook input priority filter - 5; policy drop;\n"
        "\t\tct state established accept\n"
        '\t\ttcp dport vmap @ports comment "ports"\n'
        "\t}\n}\n"
    )
    assert schema.tables_of(ruleset) == ["inet edge"]


def test_published_schema_is_the_one_the_action_plugin_uses():
    import json

    published = Path(__file__).resolve().parents[4] / "docs" / "schemas" / "nft_ruleset.schema.json"
    assert json.loads(published.read_text()) == schema.SCHEMA, (
        "regenerate: python -c 'import json,sys; from ansible_collections.kubenode.dataplane.plugins.module_utils "
        "import _nft_schema as s; json.dump(s.SCHEMA, sys.stdout, indent=2)' > docs/schemas/nft_ruleset.schema.json")


def _reply(name):
    return bytes.fromhex((FIX / name).read_text().strip())


def test_generation_from_the_kernels_replies():
    # captured in a fresh namespace, before and after one committed transaction (capture.sh, step 4)
    fresh, after_one = nfgen.parse_generation(_reply("getgen-fresh.hex")), nfgen.parse_generation(_reply("getgen-after-one.hex"))
    assert fresh == 1 and after_one == 2
    # an error reply (NLMSG_ERROR) or a truncated one carries no generation: the caller re-reads the tables
    assert nfgen.parse_generation(_reply("getgen-error.hex")) is None
    assert nfgen.parse_generation(_reply("getgen-fresh.hex")[:20]) is None
    assert nfgen.parse_generation(b"") is None


def test_generation_request_is_an_nfnetlink_getgen():
    request = nfgen.generation_request(seq=7)
    assert request.hex() == "14000000100a010007000000000000000000" + "0000"
