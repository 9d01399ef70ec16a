"""Proof that the VM is a real kernel with loadable modules and IP_VS, unlike this machine's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


def test_modprobe_ip_vs_works_in_the_vm(vm):
    machine = vm[0]
    before = machine.ssh("test", "-e", "/proc/net/ip_vs", check=False)
    machine.ssh("modprobe", "ip_vs")
    assert machine.ssh("test", "-e", "/proc/net/ip_vs", check=False).returncode == 0
    assert "ip_vs " in machine.ssh("cat", "/proc/modules").stdout
    # the kernel is Debian's own, not the host's
    assert machine.ssh("uname", "-r").stdout.strip().endswith("-amd64")
    assert before.returncode in (0, 1)


def test_modprobe_fails_on_this_machines_kernel():
    assert not Path("/proc/net/ip_vs").exists()
    proc = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True, check=False)
    assert proc.returncode != 0


def test_ansible_ping_answers_from_the_vm(vm, adhoc):
    inv = vm[1]
    run = adhoc(inv, "ansible.builtin.ping")
    assert run.rc == 0, run.explain()
    assert run.results[0]["result"]["ping"] == "pong"
