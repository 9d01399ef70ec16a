# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""JSON Schema of kube-proxy's KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1.

Written by hand from the upstream Go types (k8s.io/kube-proxy/config/v1alpha1,
k8s.io/component-base/config/v1alpha1 ClientConnectionConfiguration and
k8s.io/component-base/logs/api/v1 LoggingConfiguration) and from kube-proxy's own validation
(pkg/proxy/apis/config/validation) for the enumerations and ranges. It covers the fields of
Kubernetes 1.29 to 1.35.

Null handling follows Go's encoding/json, which kube-proxy's decoder is built on: ``null`` sets
pointers, slices and maps to nil and leaves plain strings, booleans and numbers unchanged, so it
is accepted there; metav1.Duration has its own decoder that rejects ``null``, so non-pointer
durations must be strings.

The same dictionary is published as docs/schemas/kube-proxy-config.v1alpha1.schema.json for editors
(a unit test keeps the two equal).
"""

from __future__ import annotations

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"

# kube-proxy's modes on Linux; "" lets kube-proxy pick its default (iptables)
MODES = ["", "iptables", "ipvs", "nftables"]
# validateIPVSSchedulerMethod in kube-proxy; "" means the default (rr)
IPVS_SCHEDULERS = ["", "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq"]
DETECT_LOCAL_MODES = ["", "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"]

# time.ParseDuration: a sequence of decimal numbers with units, optionally signed; "0" alone
GO_DURATION = r"^[-+]?(0|((\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)$"
# resource.Quantity (logging infoBufferSize)
QUANTITY = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"

_INT32_MAX = 2147483647


def _str(description: str, nullable: bool = True) -> dict:
    return {"type": ["string", "null"] if nullable else "string", "description": description}


def _bool(description: str) -> dict:
    return {"type": ["boolean", "null"], "description": description}


SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://github.com/kubenode/dataplane/docs/schemas/kube-proxy-config.v1alpha1.schema.json",
    "title": "KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1)",
    "description": "kube-proxy's configuration file, as kubeadm writes it into the ConfigMap kube-system/kube-proxy "
                   "(key config.conf) or as a document of a kubeadm configuration file.",
    "type": "object",
    "required": ["apiVersion", "kind"],
    "additionalProperties": False,
    "definitions": {
        "duration": {
            "title": "Go duration such as '30s' or '1m30s'",
            "type": "string",
            "pattern": GO_DURATION,
        },
        "durationOrNull": {
            "title": "Go duration such as '30s' or '1m30s', or null",
            "type": ["string", "null"],
            "pattern": GO_DURATION,
        },
        "masqueradeBit": {
            "description": "Bit of the fwmark space used to mark packets for SNAT, 0 to 31; null for the default (14).",
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 31,
        },
        "stringList": {"type": ["array", "null"], "items": {"type": "string"}},
        "outputRouting": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "splitStream": _bool("Send error messages to stderr and info messages to stdout."),
                "infoBufferSize": {
                    "title": "Kubernetes quantity such as '0' or '64Ki'",
                    "type": ["string", "integer", "number", "null"],
                    "pattern": QUANTITY,
                },
            },
        },
    },
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": KIND},
        "featureGates": {
            "description": "Feature names mapped to true or false.",
            "type": ["object", "null"],
            "additionalProperties": {"type": "boolean"},
        },
        "clientConnection": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "kubeconfig": _str("Path of the kubeconfig kube-proxy uses to reach the API server."),
                "acceptContentTypes": _str("Accept header sent to the API server."),
                "contentType": _str("Content type of requests sent to the API server."),
                "qps": {"type": ["number", "null"], "description": "Queries per second allowed to the API server."},
                "burst": {"type": ["integer", "null"], "minimum": 0, "maximum": _INT32_MAX},
            },
        },
        "logging": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "format": _str("Log format: text (default) or json."),
                "flushFrequency": {
                    "title": "nanoseconds as an integer, or a Go duration such as '5s'",
                    "type": ["integer", "string", "null"],
                    "pattern": GO_DURATION,
                },
                "verbosity": {"type": ["integer", "null"], "minimum": 0, "maximum": 4294967295},
                "vmodule": {
                    "type": ["array", "null"],
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "filePattern": {"type": "string"},
                            "verbosity": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                        },
                    },
                },
                "options": {
                    "type": ["object", "null"],
                    "additionalProperties": False,
                    "properties": {
                        "text": {"$ref": "#/definitions/outputRouting"},
                        "json": {"$ref": "#/definitions/outputRouting"},
                    },
                },
            },
        },
        "hostnameOverride": _str("Name of the Node object kube-proxy runs for, instead of the hostname."),
        "bindAddress": _str("kube-proxy's idea of the node's primary IP (no socket is bound to it)."),
        "healthzBindAddress": _str("IP:port of the health check server; empty for the default."),
        "metricsBindAddress": _str("IP:port of the metrics server, which also serves /proxyMode; empty for 127.0.0.1:10249."),
        "bindAddressHardFail": _bool("Exit when a port cannot be bound."),
        "enableProfiling": _bool("Serve /debug/pprof on the metrics server."),
        "showHiddenMetricsForVersion": _str("Show metrics hidden since this version."),
        "mode": {
            "description": "Proxy mode: iptables, ipvs or nftables; empty for the default (iptables).",
            "type": ["string", "null"],
            "enum": MODES + [None],
        },
        "iptables": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "masqueradeBit": {"$ref": "#/definitions/masqueradeBit"},
                "masqueradeAll": _bool("SNAT all traffic sent to Service cluster IPs."),
                "localhostNodePorts": _bool("Allow NodePorts on localhost (iptables mode, IPv4)."),
                "snatNodeInternalIP": _bool("SNAT service traffic with the node's InternalIP."),
                "syncPeriod": {"$ref": "#/definitions/duration"},
                "minSyncPeriod": {"$ref": "#/definitions/duration"},
            },
        },
        "ipvs": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "syncPeriod": {"$ref": "#/definitions/duration"},
                "minSyncPeriod": {"$ref": "#/definitions/duration"},
                "scheduler": {
                    "description": "IPVS scheduler; empty for the default (rr).",
                    "type": ["string", "null"],
                    "enum": IPVS_SCHEDULERS + [None],
                },
                "excludeCIDRs": {"$ref": "#/definitions/stringList"},
                "strictARP": _bool("Set arp_ignore/arp_announce so kube-ipvs0 addresses are not announced."),
                "tcpTimeout": {"$ref": "#/definitions/duration"},
                "tcpFinTimeout": {"$ref": "#/definitions/duration"},
                "udpTimeout": {"$ref": "#/definitions/duration"},
            },
        },
        "nftables": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "masqueradeBit": {"$ref": "#/definitions/masqueradeBit"},
                "masqueradeAll": _bool("SNAT all traffic sent to Service cluster IPs."),
                "syncPeriod": {"$ref": "#/definitions/duration"},
                "minSyncPeriod": {"$ref": "#/definitions/duration"},
            },
        },
        "winkernel": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "networkName": _str("Windows only."),
                "sourceVip": _str("Windows only."),
                "enableDSR": _bool("Windows only."),
                "rootHnsEndpointName": _str("Windows only."),
                "forwardHealthCheckVip": _bool("Windows only."),
            },
        },
        "detectLocalMode": {
            "description": "How local traffic is detected; empty for the default (ClusterCIDR).",
            "type": ["string", "null"],
            "enum": DETECT_LOCAL_MODES + [None],
        },
        "detectLocal": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "bridgeInterface": _str("Bridge whose traffic is local (detectLocalMode BridgeInterface)."),
                "interfaceNamePrefix": _str("Interface prefix whose traffic is local (detectLocalMode InterfaceNamePrefix)."),
            },
        },
        "clusterCIDR": _str("Pod CIDR range, or a comma-separated IPv4,IPv6 pair."),
        "nodePortAddresses": {
            "description": "CIDRs, or the keywords primary, localhost, all, where NodePorts are served.",
            "$ref": "#/definitions/stringList",
        },
        "oomScoreAdj": {"type": ["integer", "null"], "minimum": -1000, "maximum": 1000},
        "conntrack": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "maxPerCore": {"type": ["integer", "null"], "minimum": 0, "maximum": _INT32_MAX},
                "min": {"type": ["integer", "null"], "minimum": 0, "maximum": _INT32_MAX},
                "tcpEstablishedTimeout": {"$ref": "#/definitions/durationOrNull"},
                "tcpCloseWaitTimeout": {"$ref": "#/definitions/durationOrNull"},
                "tcpBeLiberal": _bool("Run conntrack in liberal mode for TCP."),
                "udpTimeout": {"$ref": "#/definitions/duration"},
                "udpStreamTimeout": {"$ref": "#/definitions/duration"},
            },
        },
        "configSyncPeriod": {"$ref": "#/definitions/duration"},
        "portRange": _str("Unused since the userspace proxy was removed."),
        "windowsRunAsService": _bool("Windows only."),
    },
}
