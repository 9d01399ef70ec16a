"""Proof that the netns hosts are real: real TCP over the veth pairs, cut by a real nft rule,
and Ansible tasks that really run inside the namespaces through kubenode.dataplane.netns."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.netns

SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16); print('ready', flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'hello\\n'); c.close()\n"
)


def connect(client, address: str, port: int, timeout: float = 2.0) -> bool:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{address}', {port}), timeout={timeout})\n"
        "sys.exit(0 if s.recv(16)==b'hello\\n' else 1)\n"
    )
    return client.run(["python3", "-c", code], check=False).returncode == 0


@pytest.fixture
def tcp_server(netns_pair):
    lab = netns_pair[0]
    server = lab.hosts[1]
    proc = subprocess.Popen(["ip", "netns", "exec", server.netns, "python3", "-c", SERVER, "8080"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield server
    proc.kill()
    proc.wait()


def test_tcp_over_veth_then_cut_by_nft_drop_rule(netns_pair, tcp_server):
    lab = netns_pair[0]
    client, server = lab.hosts
    assert connect(client, server.v4, 8080), "TCP between two netns hosts must work before any rule"
    server.run(["nft", "add", "table", "inet", "smoke"])
    server.run(["nft", "add", "chain", "inet", "smoke", "input", "{ type filter hook input priority 0; }"])
    server.run(["nft", "add", "rule", "inet", "smoke", "input", "tcp", "dport", "8080", "drop"])
    t0 = time.monotonic()
    assert not connect(client, server.v4, 8080, timeout=1.0), "a drop rule in the server namespace must cut TCP"
    assert time.monotonic() - t0 >= 0.9, "the connection must time out (dropped), not be refused"
    # the rule lives in the server's namespace only; the host's own ruleset is untouched
    host_tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert "smoke" not in host_tables


def test_ansible_reaches_inside_each_namespace(netns_pair, adhoc):
    lab, inv = netns_pair
    run = adhoc(inv, "ansible.builtin.command", "ip -br addr")
    assert run.rc == 0, run.explain()
    by_host = {r["host"]: r["result"]["stdout"] for r in run.results}
    assert set(by_host) == {"h1", "h2"}
    for host in lab.hosts:
        out = by_host[host.name]
        assert host.v4 in out, out
        others = [h.v4 for h in lab.hosts if h is not host]
        assert not any(o in out for o in others), out


def test_ping_module_through_netns_connection(netns_pair, adhoc):
    inv = netns_pair[1]
    run = adhoc(inv, "ansible.builtin.ping")
    assert run.rc == 0, run.explain()
    assert sorted(r["result"]["ping"] for r in run.results) == ["pong", "pong"]


def test_commands_get_the_controller_environment_without_pythonunbuffered(netns_pair, adhoc, monkeypatch):
    # PYTHONUNBUFFERED makes the node's Python read a pipelined module one byte per read(2)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    monkeypatch.setenv("KN_SMOKE_MARK", "kept")
    run = adhoc(netns_pair[1], "ansible.builtin.command", "env")
    assert run.rc == 0, run.explain()
    for r in run.results:
        names = dict(line.split("=", 1) for line in r["result"]["stdout_lines"] if "=" in line)
        assert names.get("KN_SMOKE_MARK") == "kept", names
        assert "PYTHONUNBUFFERED" not in names, names


def test_missing_namespace_is_a_clear_error(tmp_path, adhoc):
    inv = tmp_path / "inv.yml"
    inv.write_text('{"all": {"hosts": {"ghost": {"ansible_connection": "kubenode.dataplane.netns", '
                   '"ansible_netns_name": "kn-does-not-exist"}}}}')
    run = adhoc(inv, "ansible.builtin.ping")
    assert run.rc != 0
    assert "network namespace 'kn-does-not-exist' does not exist" in run.stdout + run.stderr
