"""Build the real kube-apiserver, kube-proxy and etcd from upstream source, through the Go module proxy only.

Usage: ``python3 tests/harness/kube/build.py [--print-dir]`` builds what is missing and prints the
directory of the binaries (``build/kube/bin/<key>/``). From Python: ``ensure_binaries()`` returns it.

Neither ``k8s.io/kubernetes`` nor ``go.etcd.io/etcd/server/v3`` can be built straight from the module
proxy: their go.mod files ``replace`` sibling modules (the Kubernetes staging modules, etcd's api/client/pkg
modules) with relative paths that only exist in a git checkout, and ``replace`` lines of a dependency are
ignored anyway. So for each of them we write a small wrapper module whose go.mod requires the upstream
module at the pinned version and replaces every such sibling with its *published* version
(k8s.io/api => k8s.io/api v0.37.2 for Kubernetes v1.37.2), then ``go get`` the main packages (which fills
in the wrapper's requirements and go.sum) and ``go build`` them. The list of siblings is read from the
upstream go.mod itself, so a version bump needs no edit here.

Every go command runs under ``nice -n 19 ionice -c3``: the machine is shared and a build must only take
idle CPU. Standard library only, so that it runs before any test requirement is installed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[3]
# KUBE_BUILD_ROOT moves the cache elsewhere (a measurement from nothing, a CI cache directory).
BUILD_ROOT = Path(os.environ.get("KUBE_BUILD_ROOT") or REPO_ROOT / "build" / "kube")
BIN_ROOT = BUILD_ROOT / "bin"
WORK_ROOT = BUILD_ROOT / "work"

# The pinned releases: the newest v1.37.x of Kubernetes and v3.6.x of etcd on the module proxy when this was written.
KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.17"

# Only idle CPU and disk time: other people build and test on the same 2 cores.
NICE = ("nice", "-n", "19", "ionice", "-c3")
MANIFEST = "manifest.json"
# How many lines of a failed go command's output the error shows.
TAIL_LINES = 25
# Words in go's output that mean the module proxy (or the network behind it) could not hand over a module,
# as opposed to a compile error: they decide which of the two sentences the CLI prints.
PROXY_ERROR_PATTERNS = re.compile(
    r"404 Not Found|410 Gone|unknown revision|invalid version|no matching versions|dial tcp|"
    r"403 Forbidden|not available|i/o timeout|connection refused|TLS handshake|verifying .*: |reading https?://|"
    r"no such host|SECURITY ERROR|missing go\.sum entry|not found: ", re.IGNORECASE)


class BuildError(RuntimeError):
    """A go command failed; ``str()`` is one sentence, ``tail`` the last lines of its output."""

    def __init__(self, sentence: str, command: Sequence[str], tail: str, log: Optional[Path] = None) -> None:
        super().__init__(sentence)
        self.command = list(command)
        self.tail = tail
        self.log = log


@dataclass(frozen=True)
class Binary:
    name: str      # file name under the bin directory
    package: str   # Go main package


@dataclass(frozen=True)
class Component:
    """One upstream Go module that the binaries come from, and how its local-path siblings are pinned."""

    name: str
    module: str
    version: str
    binaries: Tuple[Binary, ...]
    # Maps the upstream version to the published version of its siblings, for requirements that go.mod
    # only writes as a placeholder (Kubernetes requires its staging modules at v0.0.0).
    sibling_version: Callable[[str], str]
    ldflags: Callable[["Component", Mapping[str, str]], List[str]] = field(default=lambda c, info: [])


def _kubernetes_staging_version(version: str) -> str:
    # Kubernetes publishes the staging modules of v1.Y.Z as v0.Y.Z (k8s.io/api v0.37.2 for v1.37.2).
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)(.*)", version)
    if not m:
        raise ValueError(f"not a Kubernetes v1.Y.Z version: {version}")
    return f"v0.{m.group(1)}.{m.group(2)}{m.group(3)}"


def _kubernetes_ldflags(component: Component, info: Mapping[str, str]) -> List[str]:
    """The -X flags of hack/lib/version.sh (kube::version::ldflags), so --version and /version tell the release."""
    m = re.fullmatch(r"v(\d+)\.(\d+)\..*", component.version)
    major, minor = (m.group(1), m.group(2)) if m else ("", "")
    values = {
        "gitVersion": component.version,
        "gitMajor": major,
        "gitMinor": minor,
        # The commit's time as the proxy reports it, not now: the same version gives the same binary.
        "buildDate": info.get("Time", ""),
        # What component-base documents for a build from a source archive (a module zip is one); the commit
        # hash is not known without git, so gitCommit keeps its default.
        "gitTreeState": "archive",
    }
    flags = []
    for key, value in values.items():
        if value:
            for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
                flags += ["-X", f"{pkg}.{key}={value}"]
    return flags


def components(kubernetes_version: str = KUBERNETES_VERSION, etcd_version: str = ETCD_VERSION) -> Tuple[Component, ...]:
    return (
        # etcd's version is a constant in go.etcd.io/etcd/api/v3/version: no -X needed for `etcd --version`.
        Component("etcd", "go.etcd.io/etcd/server/v3", etcd_version,
                  (Binary("etcd", "go.etcd.io/etcd/server/v3"),),
                  sibling_version=lambda v: v),
        # kube-proxy first: the packages it shares with kube-apiserver (apimachinery, client-go) are then in
        # the build cache, and the smaller binary tells early whether the wrapper module is right.
        Component("kubernetes", "k8s.io/kubernetes", kubernetes_version,
                  (Binary("kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"),
                   Binary("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver")),
                  sibling_version=_kubernetes_staging_version, ldflags=_kubernetes_ldflags),
    )


def go_env() -> Dict[str, str]:
    env = dict(os.environ)
    # Static binaries that run anywhere (the VM, a netns host) and need no C toolchain to build.
    env["CGO_ENABLED"] = "0"
    # The Go of this machine, never a toolchain fetched because some go.mod names a newer one.
    env["GOTOOLCHAIN"] = "local"
    # A go.work further up must not take over the wrapper module.
    env["GOWORK"] = "off"
    return env


def _log(message: str) -> None:
    print(f"kube-build: {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_go(args: Sequence[str], cwd: Path, what: str, log: Optional[Path] = None,
           env: Optional[Mapping[str, str]] = None) -> str:
    """Run one go command niced; return its stdout. On failure raise BuildError naming *what* was wanted."""
    command = [*NICE, "go", *args]
    proc = subprocess.run(command, cwd=str(cwd), env=dict(env or go_env()), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(command)}  (in {cwd})\n{proc.stdout}{proc.stderr}\nexit {proc.returncode}\n\n")
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        # go mod download -json reports its error inside the JSON on stdout.
        try:
            output = json.loads(proc.stdout).get("Error") or output
        except (ValueError, AttributeError):
            pass
        if PROXY_ERROR_PATTERNS.search(output):
            sentence = f"The Go module proxy could not provide {what}."
        else:
            sentence = f"go {args[0]} failed for {what}."
        raise BuildError(sentence, command, _tail(output), log)
    return proc.stdout


def go_version() -> str:
    return run_go(["env", "GOVERSION"], cwd=REPO_ROOT, what="the Go version").strip()


def cache_key(comps: Sequence[Component], gover: str) -> str:
    # e.g. etcd-v3.6.17_kubernetes-v1.37.2_go1.26.8: a new release or a new Go gives a new directory.
    return "_".join([*(f"{c.name}-{c.version}" for c in comps), gover])


def _read_manifest(bin_dir: Path, comps: Sequence[Component]) -> Optional[Dict[str, Any]]:
    """The manifest if the directory is complete (written last, so its presence means the build finished)."""
    try:
        manifest: Dict[str, Any] = json.loads((bin_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if all((bin_dir / b.name).is_file() for c in comps for b in c.binaries):
        return manifest
    return None


def _placeholder(version: str) -> bool:
    # Kubernetes requires its staging modules at v0.0.0: a version that exists only because of the replace.
    return version == "v0.0.0"


def wrapper_gomod(comp: Component, upstream: Mapping[str, Any], wrapper_module: str) -> Tuple[str, Dict[str, str]]:
    """The wrapper's go.mod text, and the sibling replacements in it (module -> published version).

    *upstream* is ``go mod edit -json`` of the upstream go.mod. Each of its ``replace`` lines that points to
    a directory (no version on the right) and names a module it requires becomes ``M => M <version>``.
    Local replaces of modules it does not require (etcd's FORBIDDEN_DEPENDENCY guards, Kubernetes'
    sample-controller and sample-cli-plugin, which are not published at all) are left out: they would be
    ignored anyway, and nothing would be there to replace them with.
    """
    required = {r["Path"]: r["Version"] for r in upstream.get("Require") or []}
    replacements: Dict[str, str] = {}
    for rep in upstream.get("Replace") or []:
        old, new = rep["Old"], rep["New"]
        if new.get("Version") or old["Path"] not in required:
            continue
        version = required[old["Path"]]
        replacements[old["Path"]] = comp.sibling_version(comp.version) if _placeholder(version) else version
    lines = [f"// Generated by tests/harness/kube/build.py: builds {comp.module} {comp.version} from the module proxy.",
             f"module {wrapper_module}", "", f"go {upstream.get('Go') or '1.21'}", ""]
    # godebug lines of a dependency are ignored: copying them keeps the binary's defaults those of upstream's build.
    for gd in upstream.get("GoDebug") or []:
        lines.append(f"godebug {gd['Key']}={gd['Value']}")
    lines += ["", f"require {comp.module} {comp.version}", ""]
    if replacements:
        lines.append("replace (")
        lines += [f"\t{mod} => {mod} {ver}" for mod, ver in sorted(replacements.items())]
        lines.append(")")
    return "\n".join(lines) + "\n", replacements


@dataclass
class Prepared:
    """A component whose wrapper module is written and whose modules are all downloaded."""

    comp: Component
    work: Path
    origin: Dict[str, str]
    replacements: Dict[str, str]
    seconds: float


def prepare_component(comp: Component, key: str) -> Prepared:
    """Fetch the upstream module, write its wrapper module and resolve everything the binaries import."""
    # Under the key, so the key's lock also covers the wrapper: two keys never share a work directory.
    work = WORK_ROOT / key / comp.name
    if work.exists():
        shutil.rmtree(work)    # a half-written wrapper from an interrupted run must not be trusted
    work.mkdir(parents=True)
    log = work / "go.log"
    started = time.monotonic()

    _log(f"fetching {comp.module}@{comp.version}")
    info = json.loads(run_go(["mod", "download", "-json", f"{comp.module}@{comp.version}"], work,
                             f"{comp.module}@{comp.version}", log))
    upstream = json.loads(run_go(["mod", "edit", "-json", info["GoMod"]], work, f"the go.mod of {comp.module}", log))
    try:
        origin = json.loads(Path(info["Info"]).read_text())
    except (OSError, ValueError, KeyError):
        origin = {}
    text, replacements = wrapper_gomod(comp, upstream, f"kubenode.test/kube-build/{comp.name}")
    (work / "go.mod").write_text(text)
    _log(f"{comp.name}: wrapper module with {len(replacements)} sibling replacements in {work}")

    # go get resolves the packages' imports against the wrapper's replaces and records every module
    # they need (and its go.sum line), which the bare `require` above does not.
    pkgs = [f"{b.package}@{comp.version}" for b in comp.binaries]
    run_go(["get", *pkgs], work, f"the modules that {comp.module} {comp.version} needs", log)
    return Prepared(comp, work, origin, replacements, round(time.monotonic() - started, 1))


def build_component(prep: Prepared, out_dir: Path) -> Dict[str, object]:
    """Build the binaries of one prepared component into *out_dir*; return its part of the manifest."""
    comp = prep.comp
    # -s -w (no symbol table, no DWARF) as upstream's release builds do (hack/lib/golang.sh): smaller binaries, quicker links.
    ldflags = ["-s", "-w", *comp.ldflags(comp, prep.origin)]
    binaries: Dict[str, object] = {}
    for b in comp.binaries:
        _log(f"building {b.name} ({b.package}@{comp.version})")
        t0 = time.monotonic()
        run_go(["build", "-trimpath", "-buildvcs=false", "-ldflags", " ".join(ldflags), "-o", str(out_dir / b.name), b.package],
               prep.work, f"{b.name} {comp.version}", prep.work / "go.log")
        seconds = round(time.monotonic() - t0, 1)
        _log(f"built {b.name} in {seconds} s")
        binaries[b.name] = {"package": b.package, "build_seconds": seconds}
    return {"module": comp.module, "version": comp.version, "sibling_replacements": prep.replacements,
            "prepare_seconds": prep.seconds, "binaries": binaries}


def ensure_binaries(kubernetes_version: str = KUBERNETES_VERSION, etcd_version: str = ETCD_VERSION) -> Path:
    """Return the directory holding etcd, kube-apiserver and kube-proxy, building them first if needed."""
    comps = components(kubernetes_version, etcd_version)
    gover = go_version()
    key = cache_key(comps, gover)
    bin_dir = BIN_ROOT / key
    # The fast path takes no lock: the manifest is written last and the directory appears by rename.
    if _read_manifest(bin_dir, comps) is not None:
        return bin_dir

    BIN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BIN_ROOT / f"{key}.lock", "w") as lock:
        # A second caller waits here for the first one's build, then finds the result below.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_manifest(bin_dir, comps) is not None:
            return bin_dir
        staging = BIN_ROOT / f".{key}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        started = time.monotonic()
        try:
            # Everything is fetched before anything is compiled: a version the proxy lacks fails in seconds.
            prepared = [prepare_component(c, key) for c in comps]
            parts = {p.comp.name: build_component(p, staging) for p in prepared}
            manifest = {
                "key": key, "go_version": gover, "cgo_enabled": False, "trimpath": True,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "total_seconds": round(time.monotonic() - started, 1),
                "gocache": run_go(["env", "GOCACHE"], REPO_ROOT, "GOCACHE").strip(),
                "components": parts,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if bin_dir.exists():
                shutil.rmtree(bin_dir)   # an incomplete directory left by hand
            staging.rename(bin_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", maxsplit=1)[0])
    parser.add_argument("--print-dir", action="store_true",
                        help="print only the directory of the binaries (for $(...) in a shell)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION, help="k8s.io/kubernetes version (default %(default)s)")
    parser.add_argument("--etcd-version", default=ETCD_VERSION, help="go.etcd.io/etcd/server/v3 version (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        bin_dir = ensure_binaries(args.kubernetes_version, args.etcd_version)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"$ {' '.join(exc.command)}", file=sys.stderr)
        print(exc.tail, file=sys.stderr)
        if exc.log:
            print(f"(whole output: {exc.log})", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        # nice, ionice or go itself missing: say which, not a traceback.
        print(f"error: cannot run {exc.filename}: {exc.strerror}.", file=sys.stderr)
        return 2
    if args.print_dir:
        print(bin_dir)
    else:
        manifest = json.loads((bin_dir / MANIFEST).read_text())
        for comp in manifest["components"].values():
            for name in comp["binaries"]:
                print(f"{name} {comp['version']}")
        print(f"go {manifest['go_version']}")
        print(bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
