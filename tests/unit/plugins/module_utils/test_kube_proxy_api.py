"""The cluster side without a network: kubeconfig loading, the ConfigMap source with its optimistic
concurrency, and the rollout wait with the rules of `kubectl rollout status`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy as kp
from ansible_collections.kubenode.dataplane.plugins.module_utils import _kubeapi
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from tests.harness.kube_api_stub import admin_conf, make_pki

FIX = Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "kube_proxy"
CONFIG = (FIX / "kubeadm-1.32-configmap-config.conf").read_text()
PATH = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"


def test_admin_conf_with_embedded_certificates(tmp_path):
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "admin.conf"
    path.write_text(admin_conf("https://127.0.0.1:6443", pki))
    creds = _kubeapi.load_kubeconfig(str(path))
    assert creds.server == "https://127.0.0.1:6443" and creds.context == "kubernetes-admin@kubernetes"
    assert creds.cert_pem == pki["admin.crt"].read_text() and creds.key_pem == pki["admin.key"].read_text()
    # the key is loaded by ssl from a private temporary file, removed at once
    client = _kubeapi.KubeClient(creds)
    assert client.creds is creds


def test_kubeconfig_with_file_references_and_a_token(tmp_path):
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "token").write_text("abc\n")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x"}))
    creds = _kubeapi.load_kubeconfig(str(path))
    assert creds.token == "abc" and creds.ca_pem.startswith("-----BEGIN")


@pytest.mark.parametrize("user,message", [
    ({"exec": {"command": "aws"}}, "authenticates with an exec or auth-provider plugin"),
    ({}, "has neither a client certificate and key nor a token"),
    ({"client-certificate-data": "!!", "client-key-data": "!!"}, "client-certificate-data is not valid base64"),
])
def test_kubeconfig_errors_say_what_is_wrong(tmp_path, user, message):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x"}))
    with pytest.raises(_kubeapi.KubeApiError, match=message):
        _kubeapi.load_kubeconfig(str(path))


class FakeApi:
    """The ConfigMap and DaemonSet as the API server keeps them, with 409 on a stale resourceVersion."""

    configmap_path = staticmethod(_kubeapi.KubeClient.configmap_path)
    daemonset_path = staticmethod(_kubeapi.KubeClient.daemonset_path)

    def __init__(self, text: str, concurrent=()):
        self.cm = {"kind": "ConfigMap", "metadata": {"name": "kube-proxy", "resourceVersion": "10"},
                   "data": {"config.conf": text}}
        self.concurrent = list(concurrent)
        self.calls = []

    def request(self, method, path, body=None, content_type="application/json"):
        self.calls.append((method, path))
        if method == "GET":
            return copy.deepcopy(self.cm)
        if self.concurrent:
            self.cm["data"]["config.conf"] = self.concurrent.pop(0)(self.cm["data"]["config.conf"])
            self.cm["metadata"]["resourceVersion"] = str(int(self.cm["metadata"]["resourceVersion"]) + 1)
        if body["metadata"]["resourceVersion"] != self.cm["metadata"]["resourceVersion"]:
            raise _kubeapi.Conflict("409", 409, "Conflict")
        self.cm = copy.deepcopy(body)
        self.cm["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.cm)


def run_configmap(api, extra, retries=5, check=False):
    source = kp.ConfigMapSource(api, "kube-system", "kube-proxy", "config.conf", retries)
    return converge(kp.ConfigBackend(source, extra, lambda m: None), check_mode=check, diff=True)


def test_configmap_write_carries_the_resource_version_and_verifies():
    api = FakeApi(CONFIG)
    result = run_configmap(api, {"mode": "ipvs"})
    assert result["changed"] and result["conflicts"] == 0 and result["configmap"]["resource_version"] == "11"
    # read, write with the resourceVersion read, read back to verify
    assert api.calls == [("GET", PATH), ("PUT", PATH), ("GET", PATH)]
    again = run_configmap(api, {"mode": "ipvs"})
    assert again["changed"] is False and [m for m, _p in api.calls].count("PUT") == 1


def test_configmap_check_mode_only_reads():
    api = FakeApi(CONFIG)
    result = run_configmap(api, {"mode": "nftables"}, check=True)
    assert result["changed"] and [m for m, _p in api.calls] == ["GET"]
    assert api.cm["data"]["config.conf"] == CONFIG


def test_configmap_conflict_merges_again_over_the_newer_version():
    api = FakeApi(CONFIG, [lambda text: text.replace("clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.245.0.0/16")])
    result = run_configmap(api, {"mode": "ipvs"})
    doc = yaml.safe_load(api.cm["data"]["config.conf"])
    assert result["conflicts"] == 1 and doc["mode"] == "ipvs" and doc["clusterCIDR"] == "10.245.0.0/16"
    assert [m for m, _p in api.calls] == ["GET", "PUT", "GET", "PUT", "GET"]
    assert result["config"]["clusterCIDR"] == "10.245.0.0/16"


def test_configmap_that_keeps_changing_gives_up_and_says_so():
    api = FakeApi(CONFIG, [lambda t, i=i: t + f"\n# writer {i}" for i in range(5)])
    with pytest.raises(kp.ConfigError, match=r"kept changing under us \(3 conflicts in a row\)"):
        run_configmap(api, {"mode": "ipvs"}, retries=2)


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeDaemonSet:
    def __init__(self, statuses, strategy="RollingUpdate"):
        self.statuses = list(statuses)  # status served by each GET after the PATCH
        self.ds = {"metadata": {"generation": 1}, "spec": {"updateStrategy": {"type": strategy}, "template": {}},
                   "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                              "numberAvailable": 3}}
        self.patches = []

    daemonset_path = staticmethod(_kubeapi.KubeClient.daemonset_path)

    def request(self, method, path, body=None, content_type="application/json"):
        if method == "PATCH":
            self.patches.append((body, content_type))
            self.ds["metadata"]["generation"] = 2
            self.ds["spec"]["template"] = {"metadata": body["spec"]["template"]["metadata"]}
        elif self.statuses and self.patches:
            self.ds["status"] = self.statuses.pop(0)
        return copy.deepcopy(self.ds)


def status(observed, updated, available):
    return {"observedGeneration": observed, "desiredNumberScheduled": 3, "updatedNumberScheduled": updated,
            "numberAvailable": available}


def test_rollout_waits_for_the_new_generation_then_every_pod():
    # right after the PATCH the old status still says 3/3: only observedGeneration tells it is stale
    api = FakeDaemonSet([status(1, 3, 3), status(2, 0, 2), status(2, 2, 2), status(2, 3, 3)])
    clock = Clock()
    result = kp.rollout(api, "kube-system", "kube-proxy", restart=True, wait=True, timeout=60, interval=1,
                        check_mode=False, clock=clock, stamp="2026-01-01T00:00:00Z")
    body, content_type = api.patches[0]
    assert body == {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}}
    assert content_type == "application/strategic-merge-patch+json"
    assert result["rolled_out"] and result["restarted"] and result["waited"] == 4.0
    assert result["restarted_at"] == "2026-01-01T00:00:00Z" and result["generation"] == 2


def test_rollout_wait_is_bounded():
    api = FakeDaemonSet([status(2, 1, 2)] * 100)
    with pytest.raises(kp.DataplaneError, match=r"did not finish within 5 s \(1 of 3 pods updated\)"):
        kp.rollout(api, "kube-system", "kube-proxy", restart=True, wait=True, timeout=5, interval=1,
                   check_mode=False, clock=Clock())


def test_rollout_check_mode_and_on_delete():
    api = FakeDaemonSet([])
    result = kp.rollout(api, "kube-system", "kube-proxy", restart=True, wait=True, timeout=5, interval=1,
                        check_mode=True, clock=Clock())
    assert result["changed"] and not result["restarted"] and api.patches == []
    with pytest.raises(kp.DataplaneError, match="uses the OnDelete update strategy"):
        kp.rollout(FakeDaemonSet([], "OnDelete"), "kube-system", "kube-proxy", restart=True, wait=True, timeout=5,
                   interval=1, check_mode=False, clock=Clock())
