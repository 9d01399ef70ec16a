"""STAND-IN for kube-proxy in tests: it serves /proxyMode and nothing else.

No kube-proxy binary can be obtained on the test machines, so the tests run this instead
wherever kube-proxy would run (inside each netns test host, and as kube-proxy.service on the
VM). Like kube-proxy, it reads its KubeProxyConfiguration once, at start; it listens on
metricsBindAddress (default 127.0.0.1:10249) and answers GET /proxyMode with the mode that
configuration selects (an empty mode means iptables on Linux). It refuses to start in ipvs mode
on a kernel without IP_VS, as kube-proxy does. It programs no rules: the tests create kube-proxy's
rules themselves, the way kube-proxy writes them.

    python3 proxymode_standin.py --config /var/lib/kube-proxy/config.conf

Runs on Python 3.9+ with PyYAML (python3-yaml on the VM).
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import os
import socket
import sys

import yaml


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        for doc in yaml.safe_load_all(handle):
            if isinstance(doc, dict) and doc.get("kind") == "KubeProxyConfiguration":
                return doc
    raise SystemExit(f"{path}: no KubeProxyConfiguration")


def bind_of(config: dict) -> tuple[str, int]:
    address = config.get("metricsBindAddress") or "127.0.0.1:10249"
    host, _sep, port = address.rpartition(":")
    if not _sep:
        host, port = address, "10249"
    return host.strip("[]"), int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = load(args.config)
    mode = config.get("mode") or "iptables"
    if mode == "ipvs" and not os.path.exists("/proc/net/ip_vs"):
        print("stand-in: ipvs mode needs IP_VS in the kernel (no /proc/net/ip_vs): exiting as kube-proxy would", file=sys.stderr)
        return 1
    host, port = bind_of(config)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/proxyMode":
                body = mode.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.HTTPServer):
        address_family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        allow_reuse_address = True

    server = Server((host, port), Handler)
    print(f"stand-in kube-proxy: mode {mode}, /proxyMode on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
