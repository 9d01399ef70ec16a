# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A minimal Kubernetes API client for the few calls the collection makes.

The kube_proxy role drives a kubeadm cluster from a control-plane host with
/etc/kubernetes/admin.conf. That kubeconfig embeds the client certificate and key as base64
data, which ansible.builtin.uri cannot use without first writing the key to disk from a task,
and kubernetes.core needs the kubernetes Python client, which control-plane hosts rarely have
(and there is no Galaxy server to install kubernetes.core from here). The standard library is
enough for GET/PUT/PATCH with TLS client certificates: the key is written to a private
temporary file only while ssl loads it (ssl cannot read a key from memory) and removed at once.

Requests go straight to the server of the kubeconfig (a proxy-url in the kubeconfig is
honoured; proxy environment variables are not, so a stray https_proxy never carries the admin
credentials to a proxy).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import socket
import ssl
import tempfile
import typing as t
import urllib.error
import urllib.request
from dataclasses import dataclass

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_YAML = False

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError


class KubeApiError(DataplaneError):
    """The API server refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Conflict(KubeApiError):
    """409: the object changed since it was read (optimistic concurrency)."""


class NotFound(KubeApiError):
    """404."""


class Unreachable(KubeApiError):
    """No answer. ``sent`` is False when the connection itself failed (refused, no route, unknown name), so the
    request surely did not reach the server; True when it may have (a timeout or a reset after connecting)."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


_NOT_SENT_ERRNOS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def _not_sent(reason: t.Any) -> bool:
    return isinstance(reason, socket.gaierror) or getattr(reason, "errno", None) in _NOT_SENT_ERRNOS


@dataclass
class Credentials:
    server: str
    ca_pem: t.Optional[str] = None
    insecure: bool = False
    cert_pem: t.Optional[str] = None
    key_pem: t.Optional[str] = None
    token: t.Optional[str] = None
    proxy_url: t.Optional[str] = None
    context: str = ""


def _b64(text: str, what: str, path: str) -> str:
    try:
        decoded = base64.b64decode(str(text), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise KubeApiError(f"{path}: {what} is not valid base64 PEM data") from None
    if "-----BEGIN" not in decoded:
        raise KubeApiError(f"{path}: {what} is not valid base64 PEM data")
    return decoded


def _read(base: str, name: str) -> str:
    full = name if os.path.isabs(name) else os.path.join(os.path.dirname(base), name)
    try:
        with open(full, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise KubeApiError(f"{base} refers to {full}, which cannot be read: {exc.strerror}") from None


def _named(items: t.Any, name: str, kind: str, path: str) -> dict:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item.get(kind) or {}
    raise KubeApiError(f"{path} has no {kind} named {name!r}")


def load_kubeconfig(path: str, context: t.Optional[str] = None) -> Credentials:
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except OSError as exc:
        raise KubeApiError(f"the kubeconfig {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError:
        raise KubeApiError(f"the kubeconfig {path} is not valid YAML") from None
    if not isinstance(config, dict):
        raise KubeApiError(f"the kubeconfig {path} is not a kubeconfig")
    name = context or config.get("current-context")
    if not name:
        raise KubeApiError(f"the kubeconfig {path} has no current-context; set the context to use")
    ctx = _named(config.get("contexts"), name, "context", path)
    cluster = _named(config.get("clusters"), ctx.get("cluster"), "cluster", path)
    user = _named(config.get("users"), ctx.get("user"), "user", path)
    if "exec" in user or "auth-provider" in user:
        raise KubeApiError(f"the user of context {name!r} in {path} authenticates with an exec or auth-provider plugin, "
                           "which this collection does not run; use a kubeconfig with client certificates or a token "
                           "(such as kubeadm's admin.conf)")
    server = cluster.get("server")
    if not server or not str(server).startswith("https://"):
        raise KubeApiError(f"the cluster of context {name!r} in {path} has no https server")
    creds = Credentials(server=str(server).rstrip("/"), context=name)
    if cluster.get("certificate-authority-data"):
        creds.ca_pem = _b64(cluster["certificate-authority-data"], "certificate-authority-data", path)
    elif cluster.get("certificate-authority"):
        creds.ca_pem = _read(path, cluster["certificate-authority"])
    creds.insecure = bool(cluster.get("insecure-skip-tls-verify"))
    creds.proxy_url = cluster.get("proxy-url")
    if user.get("client-certificate-data"):
        creds.cert_pem = _b64(user["client-certificate-data"], "client-certificate-data", path)
    elif user.get("client-certificate"):
        creds.cert_pem = _read(path, user["client-certificate"])
    if user.get("client-key-data"):
        creds.key_pem = _b64(user["client-key-data"], "client-key-data", path)
    elif user.get("client-key"):
        creds.key_pem = _read(path, user["client-key"])
    if user.get("token"):
        creds.token = str(user["token"])
    elif user.get("tokenFile"):
        creds.token = _read(path, user["tokenFile"]).strip()
    if not (creds.cert_pem and creds.key_pem) and not creds.token:
        raise KubeApiError(f"the user of context {name!r} in {path} has neither a client certificate and key nor a token")
    return creds


def _ssl_context(creds: Credentials) -> ssl.SSLContext:
    if creds.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cadata=creds.ca_pem) if creds.ca_pem else ssl.create_default_context()
    if creds.cert_pem and creds.key_pem:
        private = tempfile.mkdtemp(prefix="kubenode-kubeapi-")
        try:
            cert, key = os.path.join(private, "client.crt"), os.path.join(private, "client.key")
            for name, data in ((cert, creds.cert_pem), (key, creds.key_pem)):
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(data)
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise KubeApiError(f"the client certificate or key of the kubeconfig cannot be loaded: {exc}") from None
        finally:
            shutil.rmtree(private, ignore_errors=True)
    return context


class KubeClient:
    def __init__(self, creds: Credentials, timeout: int = 30) -> None:
        self.creds = creds
        self.timeout = timeout
        handlers: list = [urllib.request.HTTPSHandler(context=_ssl_context(creds))]
        proxies = {"https": creds.proxy_url} if creds.proxy_url else {}
        handlers.append(urllib.request.ProxyHandler(proxies))
        self.opener = urllib.request.build_opener(*handlers)
        self.log: t.List[t.Tuple[str, str, int]] = []

    def request(self, method: str, path: str, body: t.Any = None, content_type: str = "application/json") -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.creds.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.creds.token:
            req.add_header("Authorization", f"Bearer {self.creds.token}")
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                self.log.append((method, path, resp.status))
                return json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as exc:
            self.log.append((method, path, exc.code))
            raw = exc.read().decode(errors="replace")
            try:
                status = json.loads(raw)
            except ValueError:
                status = {}
            message = status.get("message") or raw.strip() or exc.reason
            reason = status.get("reason", "")
            text = f"{method} {path} on {self.creds.server} answered {exc.code}: {message}"
            if exc.code == 409:
                raise Conflict(text, exc.code, reason) from None
            if exc.code == 404:
                raise NotFound(text, exc.code, reason) from None
            raise KubeApiError(text, exc.code, reason) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"the API server {self.creds.server} cannot be reached: {reason}",
                              sent=not _not_sent(reason)) from None

    # the few objects the collection touches

    @staticmethod
    def configmap_path(namespace: str, name: str) -> str:
        return f"/api/v1/namespaces/{namespace}/configmaps/{name}"

    @staticmethod
    def daemonset_path(namespace: str, name: str) -> str:
        return f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"
