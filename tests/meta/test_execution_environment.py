"""An execution environment with the collection: `ansible-builder create` on meta/execution-environment.yml
makes a build context whose Containerfile installs the collection from its own tarball and, through
ansible-builder's introspection of the installed collection, the collection's Python and system packages.

No container engine here: the test runs the context's galaxy step (ansible-galaxy from _build, as the
Containerfile's WORKDIR /build) and its builder step (the context's own introspect.py) on this machine
and checks what they write, which is what the image's pip and dnf are given. ansible-builder is installed
once into build/ansible-builder-<version>; a second run installs nothing.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUILDER_VERSION = "3.2.0"
BUILDER_VENV = ROOT / "build" / f"ansible-builder-{BUILDER_VERSION}"
EE_FILE = ROOT / "meta" / "execution-environment.yml"
VERSION = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
TARBALL = f"kubenode-dataplane-{VERSION}.tar.gz"
# bindep.txt, as the package names of each family of distributions
SYSTEM = {
    "dpkg": ["iproute2", "iptables", "nftables", "ipset", "ipvsadm", "kmod"],
    "rpm": ["iproute", "iptables-nft", "nftables", "ipset", "ipvsadm", "kmod"],
}
PYTHON = {"jsonschema", "pyroute2"}
# imported by the collection's plugins, installed with ansible-core
WITH_ANSIBLE_CORE = {"ansible", "ansible_collections", "yaml"}


def _env() -> dict:
    env = dict(os.environ, PATH=f"{BUILDER_VENV / 'bin'}:{BIN}:{os.environ.get('PATH', '')}")
    env.pop("ANSIBLE_CONFIG", None)
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    return env


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=_env(), check=False,
                          stdin=subprocess.DEVNULL, **kwargs)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def builder() -> Path:
    """ansible-builder in a virtual environment of its own, installed once."""
    marker = BUILDER_VENV / ".installed"
    BUILDER_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILDER_VENV.parent / f".{BUILDER_VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two tiers starting at once install it once
        if not marker.exists():
            venv.create(BUILDER_VENV, with_pip=True, clear=True)
            _run([BUILDER_VENV / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  f"ansible-builder=={BUILDER_VERSION}"])
            marker.write_text(BUILDER_VERSION + "\n")
    return BUILDER_VENV / "bin"


@pytest.fixture(scope="module")
def context(builder, tmp_path_factory) -> Path:
    """The build context of meta/execution-environment.yml, with the collection's tarball where the
    definition takes it from (build/dist, as `make build-collection` leaves it)."""
    tmp = tmp_path_factory.mktemp("ee")
    _run([BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp, ROOT], cwd=tmp)
    dist = ROOT / "build" / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    os.replace(tmp / TARBALL, dist / TARBALL)   # whole or not at all, for anyone reading it meanwhile
    ctx = tmp / "context"
    _run([builder / "ansible-builder", "create", "-f", EE_FILE, "--output-filename", "Containerfile", "-c", ctx],
         cwd=tmp)
    return ctx


@pytest.fixture(scope="module")
def introspected(builder, context, tmp_path_factory) -> dict:
    """What the image's galaxy and builder stages make of the context: the collection installed from
    _build as the Containerfile installs it, then the context's introspect.py over it with the user files."""
    tmp = tmp_path_factory.mktemp("image")
    share = tmp / "usr" / "share" / "ansible" / "collections"
    build = context / "_build"
    _run([BIN / "ansible-galaxy", "collection", "install", "-r", "requirements.yml", "--collections-path", share],
         cwd=build)
    out = tmp / "src"
    _run([builder / "python", build / "scripts" / "introspect.py", "introspect", share,
          "--user-pip=requirements.txt", "--user-bindep=bindep.txt",
          f"--write-pip={out / 'requirements.txt'}", f"--write-bindep={out / 'bindep.txt'}"], cwd=build)
    return {"share": share, "pip": (out / "requirements.txt").read_text(), "bindep": (out / "bindep.txt").read_text()}


def test_dependency_files_are_the_same_at_root_and_in_meta():
    ee = yaml.safe_load(EE_FILE.read_text())
    assert ee["version"] == 3
    for entry in ("python", "system"):
        name = ee["dependencies"][entry]
        # read from the collection's root by an execution environment that installs the collection,
        # from meta/ by `ansible-builder create -f meta/execution-environment.yml`
        assert (ROOT / name).read_text() == (ROOT / "meta" / name).read_text(), f"copy {name} to meta/{name}"
    galaxy = ee["dependencies"]["galaxy"]["collections"]
    assert galaxy == [{"name": f"collections/{TARBALL}", "type": "file"}], \
        f"meta/execution-environment.yml must install {TARBALL}, the version of galaxy.yml"


def test_python_requirements_cover_what_the_plugins_import():
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (ROOT / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - WITH_ANSIBLE_CORE - {"__future__"}
    assert third_party == PYTHON, f"plugins import {sorted(third_party)}; requirements.txt names {sorted(PYTHON)}"


def test_containerfile_installs_the_collection_and_its_dependencies(context):
    containerfile = (context / "Containerfile").read_text()
    for step in (
        'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"',
        "COPY _build /build",
        'ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml '
        '--collections-path "/usr/share/ansible/collections"',
        "COPY _build/requirements.txt requirements.txt",
        "COPY _build/bindep.txt bindep.txt",
        "RUN $PYCMD /output/scripts/introspect.py introspect --user-pip=requirements.txt --user-bindep=bindep.txt "
        "--write-bindep=/tmp/src/bindep.txt --write-pip=/tmp/src/requirements.txt",
        "RUN /output/scripts/assemble",
        "RUN /output/scripts/install-from-bindep",
    ):
        assert step in containerfile, f"{step!r} not in the Containerfile:\n{containerfile}"
    build = context / "_build"
    # the files, not links: a link would be copied as a link and dangle in the image
    for name, source in (("requirements.txt", "requirements.txt"), ("bindep.txt", "bindep.txt")):
        assert not (build / name).is_symlink() and (build / name).read_text() == (ROOT / source).read_text()
    assert yaml.safe_load((build / "requirements.yml").read_text()) == {
        "collections": [{"name": f"collections/{TARBALL}", "type": "file"}]}
    with tarfile.open(build / "collections" / TARBALL) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["version"] == VERSION
    assert {"requirements.txt", "bindep.txt", "meta/execution-environment.yml"} <= names, \
        "galaxy.yml's build_ignore must keep the dependency files in the tarball"


def test_image_gets_the_collection_and_its_packages(introspected):
    installed = introspected["share"] / "ansible_collections" / "kubenode" / "dataplane"
    assert json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"] == VERSION
    pip = introspected["pip"].splitlines()
    for name in PYTHON:
        # from the collection, found by introspection, and from the definition's own file
        assert [ln for ln in pip if ln.startswith(name) and ln.endswith("# from collection kubenode.dataplane")], pip
        assert [ln for ln in pip if ln.startswith(name) and ln.endswith("# from collection user")], pip
    bindep = [ln for ln in introspected["bindep"].splitlines() if ln.endswith("# from collection kubenode.dataplane")]
    assert {ln.split()[0] for ln in bindep} == set(SYSTEM["dpkg"]) | set(SYSTEM["rpm"]), introspected["bindep"]


@pytest.mark.parametrize("family", sorted(SYSTEM))
def test_system_packages_of_each_family(builder, introspected, family):
    """bindep, as install-from-bindep asks it, on each family of distributions (the rules evaluated
    with that platform's selectors; this machine is only one of them)."""
    platforms = {"dpkg": ["platform:dpkg", "platform:debian"], "rpm": ["platform:rpm", "platform:redhat", "platform:centos"]}
    script = ("import json, sys\nfrom bindep.depends import Depends\n"
              "rules = Depends(sys.stdin.read()).active_rules(json.loads(sys.argv[1]) + ['default'])\n"
              "print(json.dumps(sorted({r[0] for r in rules})))\n")
    proc = subprocess.run([str(builder / "python"), "-c", script, json.dumps(platforms[family])],
                          input=introspected["bindep"], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == sorted(SYSTEM[family])
