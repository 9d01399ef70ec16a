"""`make demo`: the collection's main job on the built-in real-kernel test node.

Boots the VM (building its image the first time), runs playbooks/node.yml on it with the demo
spec (nftables firewall, kube-proxy configured for ipvs through its config file), runs it again
to show the second run changes nothing, prints the doctor report, and stops the VM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import ansible_run  # noqa: E402  pylint: disable=wrong-import-position
from tests.harness.vm import vm as vmharness  # noqa: E402  pylint: disable=wrong-import-position

SPEC = ROOT / "playbooks" / "examples" / "demo-node-spec.yml"
STARTED = time.monotonic()


def step(msg: str) -> None:
    print(f"\n==> [{time.monotonic() - STARTED:5.0f} s] {msg}", flush=True)


def playbook(name: str, inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [str(ansible_run.BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / name), *extra]
    env = ansible_run.env()
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    return subprocess.run(argv, env=env, cwd=ROOT, text=True, capture_output=True, check=False)


def recap(output: str) -> str:
    return output[output.index("PLAY RECAP"):].strip() if "PLAY RECAP" in output else output[-2000:]


def main() -> int:
    step("preparing the real-kernel test node (Debian 12 kernel under QEMU; the first time builds its image, ~1 min)")
    workdir = Path(tempfile.mkdtemp(prefix="kubenode-demo-"))
    machine = vmharness.start(workdir)
    try:
        inventory = workdir / "inventory.yml"
        inventory.write_text(json.dumps(machine.inventory(), indent=2))
        print(f"    inventory: {inventory}  (kernel {machine.ssh('uname', '-r').stdout.strip()})")

        step(f"ansible-playbook kubenode.dataplane.node with {SPEC.relative_to(ROOT)}")
        first = playbook("node.yml", inventory, "-e", f"@{SPEC}")
        print(recap(first.stdout))
        if first.returncode != 0:
            print(first.stdout[-6000:], first.stderr[-3000:], sep="\n")
            return 1

        step("the same playbook again: it must change nothing")
        second = playbook("node.yml", inventory, "-e", f"@{SPEC}")
        print(recap(second.stdout))
        if second.returncode != 0 or "changed=0" not in recap(second.stdout):
            print(second.stdout[-6000:])
            print("!! the second run was not changed=0")
            return 1

        step("doctor: what is really active on the node")
        # the doctor reads the configured mode from the file the spec told kube-proxy to use
        config_path = yaml.safe_load(SPEC.read_text())["node_spec"]["kube_proxy"]["config_path"]
        doctor = playbook("doctor.yml", inventory, "-e", f"doctor_kube_proxy_config={config_path}")
        start = doctor.stdout.find("TASK [Report")
        print(doctor.stdout[start:doctor.stdout.find("PLAY RECAP")].strip() if start >= 0 else doctor.stdout[-4000:])
        if doctor.returncode != 0:
            return 1
        return 0
    finally:
        step("stopping the VM")
        machine.shutdown()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
        step(f"done in {time.monotonic() - STARTED:.0f} s")


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("make demo needs root (QEMU networking, image build)", file=sys.stderr)
        sys.exit(1)
    sys.exit(main())
