"""pytest fixtures for the real Kubernetes components. A test module makes one its own by its name:

    from tests.harness.kube import fixtures
    kube_cluster = fixtures.kube_cluster      # (an assignment, not an import that linters call unused)

(tests/conftest.py is shared by every tier and stays free of them: only the tests that want a cluster pay for one.)
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.kube import build
from tests.harness.kube.cluster import Cluster, ClusterError, Ports


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """One real etcd + kube-apiserver for the session, on free ports, stopped at its end.

    Builds the binaries first if they are not cached (build.py; about 10 minutes from nothing); a build that
    cannot be done (no Go, no module proxy) skips the tests that use it, with the reason. A cluster that was built
    but does not start is an error, not a skip. With KUBENODE_KUBE_CLUSTER set to the state directory of a
    running `make cluster-up` cluster (build/kube/cluster), that one is used and left running.
    """
    given = os.environ.get("KUBENODE_KUBE_CLUSTER")
    if given:
        cluster = Cluster(Path(given))
        if not cluster.running():
            pytest.fail(f"KUBENODE_KUBE_CLUSTER={given}: no running cluster there (make cluster-up)")
        yield cluster
        return
    try:
        bin_dir = build.ensure_binaries()
    except build.BuildError as exc:
        last = (exc.tail.strip().splitlines() or [""])[-1]
        pytest.skip(f"the real Kubernetes binaries cannot be built here: {exc} {last}")
    except FileNotFoundError as exc:
        pytest.skip(f"the real Kubernetes binaries cannot be built here: no {exc.filename}")
    # Own ports and directory: a `make cluster-up` cluster or another session's may be running beside it.
    cluster = Cluster(tmp_path_factory.mktemp("kube-cluster"), ports=Ports.free(), bin_dir=bin_dir, owned=True)
    # An interrupted session (Ctrl-C) still stops it; a killed one too, through the processes' parent-death signal.
    atexit.register(cluster.stop)
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.fail(f"the real control plane did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
