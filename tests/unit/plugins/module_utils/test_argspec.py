"""_argspec.validate_list against Ansible's own ArgumentSpecValidator on the same input: the same result
when Ansible accepts it, an error naming the element when Ansible refuses it. The module documents the
suboptions it defers, with the types, defaults and choices the backend checks."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.kubenode.dataplane.plugins.module_utils import _argspec
from ansible_collections.kubenode.dataplane.plugins.module_utils._ipvs import SERVICE_OPTIONS
from ansible_collections.kubenode.dataplane.plugins.modules import ipvs_services

RS = {"address": "10.0.1.1", "port": 8080, "forwarding_method": "masquerade"}

ACCEPTED = {
    "minimal": [{"address": "10.0.0.1", "port": 80}],
    "every option": [{
        "protocol": "udp", "address": "fd00::1", "port": 53, "family": "ipv6", "scheduler": "mh",
        "scheduler_flags": ["mh-port", "mh-fallback"], "one_packet": True, "persistence_timeout": 300,
        "persistence_netmask": "64", "persistence_engine": "sip", "state": "present",
        "real_servers": [{"address": "fd00::2", "port": 53, "weight": 3, "forwarding_method": "tunnel",
                          "upper_threshold": 10, "lower_threshold": 2, "tunnel_type": "gue", "tunnel_port": 6080,
                          "tunnel_checksum": "remcsum"}],
    }],
    "numbers and booleans as strings": [
        {"address": "10.0.0.1", "port": "80", "one_packet": "yes", "persistence_timeout": "60", "real_servers": [dict(RS, weight="2")]},
    ],
    "flags as one comma-separated string": [{"address": "10.0.0.1", "port": 80, "scheduler": "sh", "scheduler_flags": "sh-port,sh-fallback"}],
    "a real server written as k=v": [{"address": "10.0.0.1", "port": 80, "real_servers": ["address=10.0.1.1 port=8080"]}],
    "a number where a string is wanted": [{"address": "10.0.0.1", "port": 80, "scheduler": 5}],
    "explicit nulls without choices": [{"address": "10.0.0.1", "port": None, "fwmark": None, "persistence_engine": None}],
    "an fwmark service, absent": [{"fwmark": 7, "state": "absent"}],
    "many": [{"address": f"10.0.{i // 256}.{i % 256}", "port": 80, "real_servers": [RS, dict(RS, address="10.0.1.2")]}
             for i in range(300)],
    "none at all": [],
}

REFUSED = {
    "an unknown option": ([{"address": "10.0.0.1", "port": 80, "sheduler": "rr"}], "services[0]: unsupported option sheduler"),
    "an unknown real server option": ([{"address": "10.0.0.1", "port": 80, "real_servers": [dict(RS, wieght=2)]}],
                                      "services[0].real_servers[0]: unsupported option wieght"),
    "a real server without address": ([{"address": "10.0.0.1", "port": 80, "real_servers": [{"port": 80}]}],
                                      "services[0].real_servers[0].address: missing"),
    "a word for a number": ([{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": "http"}],
                            "services[1].port:"),
    "a wrong choice": ([{"address": "10.0.0.1", "port": 80, "protocol": "icmp"}], "services[0].protocol: must be one of tcp, udp, sctp; got icmp"),
    "a wrong flag": ([{"address": "10.0.0.1", "port": 80, "scheduler_flags": ["sh-port", "fast"]}],
                     "services[0].scheduler_flags: must be one or more of"),
    "a null against choices": ([{"address": "10.0.0.1", "port": 80, "family": None}], "services[0].family: must be one of"),
    "a null where a default is": ([{"address": "10.0.0.1", "port": 80, "real_servers": [dict(RS, weight=None)]}],
                                  "services[0].real_servers[0].weight:"),
    "a null list of real servers": ([{"address": "10.0.0.1", "port": 80, "real_servers": None}], "services[0].real_servers:"),
    "a real server that is a number": ([{"address": "10.0.0.1", "port": 80, "real_servers": [5]}], "services[0].real_servers:"),
    "not a bool": ([{"address": "10.0.0.1", "port": 80, "one_packet": "maybe"}], "services[0].one_packet:"),
}


def ansible(items):
    # through JSON, as a module gets its arguments: no dict shared between elements (Ansible fills them in place)
    result = ArgumentSpecValidator(ipvs_services.ARGUMENT_SPEC).validate({"services": json.loads(json.dumps(items))})
    return result.validated_parameters.get("services"), result.error_messages


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_same_result_as_ansible(name):
    items = ACCEPTED[name]
    expected, errors = ansible(items)
    assert not errors, errors
    given = copy.deepcopy(items)
    assert _argspec.validate_list(given, SERVICE_OPTIONS, "services") == expected
    assert given == items, "the input must not be changed in place"


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_like_ansible_and_named_by_path(name):
    items, message = REFUSED[name]
    _validated, errors = ansible(items)
    assert errors, "Ansible accepts this input: the case is wrong"
    with pytest.raises(_argspec.SuboptionError) as caught:
        _argspec.validate_list(items, SERVICE_OPTIONS, "services")
    assert str(caught.value).startswith(message), str(caught.value)


def test_defaults_are_fresh_per_element():
    out = _argspec.validate_list([{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80}],
                                 SERVICE_OPTIONS, "services")
    out[0]["scheduler_flags"].append("sh-port")
    assert out[1]["scheduler_flags"] == []
    assert SERVICE_OPTIONS["scheduler_flags"]["default"] == []


def test_deferred_keeps_the_type_and_drops_only_the_options():
    spec = _argspec.deferred(ipvs_services.ARGUMENT_SPEC, "services")
    assert spec["services"] == {"type": "list", "elements": "dict", "default": []}
    assert "options" in ipvs_services.ARGUMENT_SPEC["services"], "the module's own spec must stay whole"
    assert {k: v for k, v in spec.items() if k != "services"} == {
        k: v for k, v in ipvs_services.ARGUMENT_SPEC.items() if k != "services"}
    with pytest.raises(ValueError):
        _argspec.deferred(ipvs_services.ARGUMENT_SPEC, "purge")


def _shape(options, nested):
    """type, elements, default, choices, required and nested options, from a spec or from DOCUMENTATION."""
    out = {}
    for name, entry in options.items():
        shape = {"type": entry.get("type", "str")}
        for key in ("elements", "default", "choices", "required"):
            if entry.get(key) not in (None, False):
                shape[key] = entry[key]
        if nested in entry:
            shape["options"] = _shape(entry[nested], nested)
        out[name] = shape
    return out


def test_the_deferred_suboptions_are_documented_as_checked():
    # ansible-test's validate-modules sees the spec AnsibleModule gets, without these suboptions: this is its check
    docs = yaml.safe_load(ipvs_services.DOCUMENTATION)["options"]["services"]["suboptions"]
    assert _shape(docs, "suboptions") == _shape(SERVICE_OPTIONS, "options")
