"""The real-kernel test node: Debian 12's own kernel under QEMU software emulation.

This machine's kernel has no loadable modules and no IP_VS, so kernel modules, IPVS and the
end-to-end node are tested in this VM. The base image is built once by build.sh and cached
under $KUBENODE_CACHE (default ~/.cache/kubenode-dataplane), keyed by the kernel package's
version, the package list and build.sh itself; each run boots a throwaway qcow2 overlay.

    python3 tests/harness/vm/vm.py up --inventory build/inventory-vm.yml   # prints the path
    python3 tests/harness/vm/vm.py reboot --inventory build/inventory-vm.yml
    python3 tests/harness/vm/vm.py down --inventory build/inventory-vm.yml
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "systemd-sysv,udev,kmod,iproute2,ipvsadm,ipset,conntrack,iptables,nftables,openssh-server,"
    "python3,python3-yaml,python3-apt,procps,curl"
)
PYROUTE2 = "0.9.7"
BOOT_TIMEOUT = 240  # software emulation: 13-21 s is usual, a hung boot must not hang the suite
SSH_OPTS = [
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3",
]


def log(msg: str) -> None:
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("KUBENODE_CACHE", Path.home() / ".cache" / "kubenode-dataplane"))


def kernel_package_version() -> str:
    out = subprocess.run(["apt-cache", "policy", "linux-image-amd64"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if "Candidate:" in line:
            return line.split()[-1]
    raise RuntimeError("apt-cache knows no linux-image-amd64: run 'apt-get update' first")


def image_dir() -> Path:
    key = hashlib.sha256(
        "\n".join([kernel_package_version(), PACKAGES, PYROUTE2, (HERE / "build.sh").read_text()]).encode()
    ).hexdigest()[:16]
    return cache_root() / f"vm-{key}"


def ensure_image() -> Path:
    img = image_dir()
    if (img / "base.img").exists():
        return img
    img.parent.mkdir(parents=True, exist_ok=True)
    # `make test` boots VMs from two tiers at once: one builds, the others wait for it (build.sh
    # replaces the image directory, which must not happen under a VM already booted from it)
    with open(img.parent / "build.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (img / "base.img").exists():
            return img
        # older images of other keys are stale: keep the cache to one image
        for old in img.parent.glob("vm-*"):
            if old != img and not old.name.startswith(img.name):
                subprocess.run(["rm", "-rf", str(old)], check=False)
        log(f"building the base image in {img} (about a minute)")
        env = dict(os.environ, PACKAGES=PACKAGES, PYROUTE2=PYROUTE2)
        subprocess.run(["bash", str(HERE / "build.sh"), str(img)], check=True, env=env)
    return img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VM:
    image: Path
    overlay: Path
    port: int
    workdir: Path

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def key(self) -> Path:
        return self.image / "id_test"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def ssh_argv(self, *remote: str) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key)] + SSH_OPTS + ["root@127.0.0.1"] + list(remote)

    def ssh(self, *remote: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        # stdin of its own: ssh makes its stdin non-blocking, and a shared one would fail every later ansible
        return subprocess.run(self.ssh_argv(*remote), capture_output=True, text=True, check=check, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def boot(self) -> None:
        if not self.overlay.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image / "base.img"), "-F", "raw", str(self.overlay)],
                check=True,
            )
        started = time.monotonic()
        # -accel tcg explicitly: /dev/kvm here is a PVM hypervisor that hangs a stock kernel
        subprocess.run(
            [
                "qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-cpu", "qemu64", "-smp", "2", "-m", "1G",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", f"file:{self.serial_log}",
                "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.gz"),
                "-append", "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 "
                "modprobe.blacklist=pcspkr,iTCO_wdt,i2c_i801,lpc_ich,ahci,sr_mod,kvm,kvm_amd,kvm_intel,psmouse,serio_raw,evdev,button,joydev",
                "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                "-device", "virtio-net-pci,netdev=n0",
                "-daemonize", "-pidfile", str(self.pidfile),
            ],
            check=True,
        )
        while time.monotonic() - started < BOOT_TIMEOUT:
            if self.pid() is None:
                raise RuntimeError(f"QEMU exited during boot; see {self.serial_log}")
            try:
                if self.ssh("true", check=False, timeout=10).returncode == 0:
                    log(f"up on 127.0.0.1:{self.port} after {time.monotonic() - started:.0f} s")
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"the VM did not answer on SSH within {BOOT_TIMEOUT} s; see {self.serial_log}")

    def wait_exit(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.pid() is None:
                return True
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            self.wait_exit(10)

    def shutdown(self) -> None:
        if self.pid() is None:
            return
        # no D-Bus in the minbase image: systemctl complains and powers off all the same
        try:
            self.ssh("systemctl", "poweroff", check=False, timeout=15)
        except subprocess.TimeoutExpired:
            pass
        if not self.wait_exit(60):
            self.kill()

    def reboot(self) -> None:
        """A real reboot of the guest: -no-reboot makes QEMU exit, then boot the same overlay again."""
        started = time.monotonic()
        try:
            self.ssh("systemctl", "reboot", check=False, timeout=15)
        except subprocess.TimeoutExpired:
            pass
        if not self.wait_exit(90):
            self.kill()
        self.boot()
        # SSH answers before the boot has finished; what a reboot test checks (units, transient scopes) must
        # find it finished, also when other work slows the emulated guest down (degraded counts as finished)
        try:
            self.ssh("systemctl", "is-system-running", "--wait", check=False, timeout=240)
        except subprocess.TimeoutExpired:
            log("the boot did not finish within 240 s; going on")
        log(f"rebooted in {time.monotonic() - started:.0f} s")

    def inventory(self) -> dict:
        return {
            "all": {
                "hosts": {
                    "kubenode-vm": {
                        "ansible_host": "127.0.0.1",
                        "ansible_port": self.port,
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(self.key),
                        "ansible_ssh_common_args": " ".join(SSH_OPTS),
                        "ansible_python_interpreter": "/usr/bin/python3",
                    }
                }
            }
        }

    def state(self) -> dict:
        return {"image": str(self.image), "overlay": str(self.overlay), "port": self.port, "workdir": str(self.workdir)}

    @classmethod
    def from_state(cls, state: dict) -> "VM":
        return cls(Path(state["image"]), Path(state["overlay"]), int(state["port"]), Path(state["workdir"]))


def start(workdir: Path) -> VM:
    image = ensure_image()
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 3
    while True:
        vm = VM(image, workdir / "overlay.qcow2", free_port(), workdir)
        vm.overlay.unlink(missing_ok=True)
        try:
            vm.boot()
            return vm
        except subprocess.CalledProcessError:
            # QEMU refuses to start when another process took the forwarded port in the meantime
            attempts -= 1
            if not attempts:
                raise
            log("QEMU did not start; trying again on another port")


def state_path(inventory: Path) -> Path:
    return Path(str(inventory) + ".state.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("cmd", choices=["build", "up", "down", "reboot", "ssh"])
    parser.add_argument("--inventory", type=Path, default=Path("build/inventory-vm.yml"))
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    inv = args.inventory.resolve()
    if args.cmd == "build":
        print(ensure_image())
        return 0
    if args.cmd == "up":
        if state_path(inv).exists():
            VM.from_state(json.loads(state_path(inv).read_text())).shutdown()
        vm = start(inv.parent / (inv.stem + "-run"))
        inv.write_text(json.dumps(vm.inventory(), indent=2) + "\n")
        state_path(inv).write_text(json.dumps(vm.state()))
        print(inv)
        return 0
    if not state_path(inv).exists():
        print(f"no VM recorded for {inv}", file=sys.stderr)
        return 0 if args.cmd == "down" else 1
    vm = VM.from_state(json.loads(state_path(inv).read_text()))
    if args.cmd == "reboot":
        vm.reboot()
        return 0
    if args.cmd == "ssh":
        return subprocess.run(vm.ssh_argv(*args.rest), check=False).returncode
    vm.shutdown()
    vm.overlay.unlink(missing_ok=True)
    state_path(inv).unlink()
    inv.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
