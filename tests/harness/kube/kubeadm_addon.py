"""kubeadm's kube-proxy addon as kubeadm itself prints it, for the one-node test cluster (cluster.py).

The objects `kubeadm init` creates for kube-proxy in kube-system (ServiceAccount, ClusterRoleBinding
kubeadm:node-proxier, Role and RoleBinding for reading the ConfigMap, the kube-proxy ConfigMap and
DaemonSet) are not written by hand here: the real kubeadm is built from the same source as the other
binaries (k8s.io/kubernetes/cmd/kubeadm, through build.py's wrapper module) and asked for them with
``kubeadm init phase addon kube-proxy --print-manifest``, which runs kubeadm's own defaulting of the
KubeProxyConfiguration and its own templates (cmd/kubeadm/app/phases/addons/proxy). The output is
committed beside this file (ADDON_FILE), so that starting a cluster needs no kubeadm build:

    python3 tests/harness/kube/kubeadm_addon.py --write    # builds kubeadm if needed, rewrites the file
    python3 tests/harness/kube/kubeadm_addon.py --check    # exit 1 if kubeadm now prints something else

What --print-manifest leaves out and cluster.py adds as kubeadm does when it creates the objects: the
ConfigMap's annotation kubeadm.kubernetes.io/component-config.hash (componentconfigs.SignConfigMap) and
the DaemonSet container's proxy environment variables (none here: no HTTP(S)_PROXY is set for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.harness.kube import build  # noqa: E402

HERE = Path(__file__).resolve().parent
# kubeadm refuses a loopback advertise address ("unable to select an IP from lo network interface"), so
# it is told the cluster's netns-facing address (cluster.py NETNS_ADDRESS), and the endpoint that it writes
# into the ConfigMap's kubeconfig.conf is given as controlPlaneEndpoint: 127.0.0.1 and the API server's port
# (cluster.py API_PORT). cluster.py puts its own port there when a cluster runs on another one.
ADVERTISE_ADDRESS = "198.18.0.254"
CONTROL_PLANE_ENDPOINT = "127.0.0.1:26443"
BIND_PORT = 26443
CONFIGMAP_HASH_ANNOTATION = "kubeadm.kubernetes.io/component-config.hash"


def addon_file(version: str = build.KUBERNETES_VERSION) -> Path:
    return HERE / f"kubeadm-{version}-kube-proxy-addon.manifest"


# The configuration handed to kubeadm: only what `kubeadm init` would take from its flags for this cluster.
# criSocket is given so that kubeadm does not look for a container runtime (there is none here); it does
# not appear in the addon. No podSubnet: the test cluster has no pod network, so clusterCIDR stays empty.
KUBEADM_CONFIG = """apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {address}
  bindPort: {port}
nodeRegistration:
  name: kubenode-test
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {version}
controlPlaneEndpoint: {endpoint}
networking:
  serviceSubnet: 10.96.0.0/12
"""


def ensure_kubeadm(version: str = build.KUBERNETES_VERSION) -> Path:
    """The kubeadm binary of *version*, built as build.py builds kube-proxy (same wrapper, same -X flags)."""
    kubernetes = next(c for c in build.components(kubernetes_version=version) if c.name == "kubernetes")
    comp = dataclasses.replace(kubernetes, binaries=(build.Binary("kubeadm", "k8s.io/kubernetes/cmd/kubeadm"),))
    key = f"kubeadm-{version}_{build.go_version()}"
    out_dir = build.BUILD_ROOT / "kubeadm" / key
    binary = out_dir / "kubeadm"
    if binary.is_file():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # Its own work directory (the key differs from build.py's), so build.py's wrappers are never touched.
    prepared = build.prepare_component(comp, key)
    partial = out_dir / ".partial"
    partial.mkdir(exist_ok=True)
    build.build_component(prepared, partial)
    (partial / "kubeadm").rename(binary)
    partial.rmdir()
    return binary


def print_manifest(kubeadm: Path, version: str = build.KUBERNETES_VERSION) -> str:
    """What ``kubeadm init phase addon kube-proxy --print-manifest`` prints for the test cluster."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "kubeadm.yaml"
        config.write_text(KUBEADM_CONFIG.format(address=ADVERTISE_ADDRESS, port=BIND_PORT, version=version,
                                                endpoint=CONTROL_PLANE_ENDPOINT))
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        proc = subprocess.run([str(kubeadm), "init", "phase", "addon", "kube-proxy", "--print-manifest",
                               "--config", str(config)],
                              capture_output=True, text=True, env=env, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"kubeadm --print-manifest failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def header(version: str) -> str:
    return (f"# Generated by tests/harness/kube/kubeadm_addon.py --write: the output of the real kubeadm {version}\n"
            f"# (built from k8s.io/kubernetes@{version}), `kubeadm init phase addon kube-proxy --print-manifest`\n"
            f"# for advertiseAddress {ADVERTISE_ADDRESS}, bindPort {BIND_PORT}, controlPlaneEndpoint\n"
            f"# {CONTROL_PLANE_ENDPOINT}, no podSubnet. Do not edit.\n")


def config_map_hash(data: Dict[str, str]) -> str:
    """componentconfigs.ChecksumForConfigMap: sha256 over the data values in the order of their sorted keys."""
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(data[key].encode())
    return f"sha256:{digest.hexdigest()}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"rewrite {addon_file().name}")
    group.add_argument("--check", action="store_true", help="compare kubeadm's output with the committed file")
    group.add_argument("--print", action="store_true", help="print kubeadm's output")
    parser.add_argument("--kubernetes-version", default=build.KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    try:
        kubeadm = ensure_kubeadm(args.kubernetes_version)
    except build.BuildError as exc:
        print(f"error: {exc}\n{exc.tail}", file=sys.stderr)
        return 2
    text = header(args.kubernetes_version) + print_manifest(kubeadm, args.kubernetes_version)
    target = addon_file(args.kubernetes_version)
    if args.print:
        sys.stdout.write(text)
        return 0
    if args.write:
        target.write_text(text)
        print(target)
        return 0
    current = target.read_text() if target.exists() else ""
    if current == text:
        print(f"{target.name}: as kubeadm {args.kubernetes_version} prints it")
        return 0
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                               str(target), "kubeadm --print-manifest"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
