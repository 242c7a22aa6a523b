"""The CNI plugin's own half: validation, errors, VERSION and result formats, no agent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import plugin

PLUGIN = [sys.executable, "-m", "cni.plugin"]
ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
}


def conf(tmp_path=None, **over):
    c = {
        "cniVersion": "1.0.0",
        "name": "overlay",
        "type": "ovs-overlay",
        "network": "default",
        "agentSocket": str(tmp_path / "no-agent.sock") if tmp_path else "/nonexistent/agent.sock",
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def run_plugin(env, stdin):
    proc = subprocess.run(PLUGIN, input=stdin, env=env, capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_version_lists_every_supported_version():
    code, out = run_plugin({"CNI_COMMAND": "VERSION"}, '{"cniVersion":"1.0.0"}')
    assert code == 0
    assert out["cniVersion"] == "1.0.0"
    assert {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_version_answers_in_the_latest_version_for_an_unknown_one():
    assert plugin.version_result({"cniVersion": "9.9.9"})["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(
    "env,config,code,words",
    [
        ({}, conf(), plugin.ERR_INVALID_ENV, "CNI_COMMAND"),
        ({"CNI_COMMAND": "FROB"}, conf(), plugin.ERR_INVALID_ENV, "CNI_COMMAND"),
        (ADD_ENV, conf(cniVersion="0.2.0"), plugin.ERR_INCOMPATIBLE_VERSION, "0.2.0"),
        (ADD_ENV, conf(cniVersion=None), plugin.ERR_INVALID_CONFIG, "cniVersion"),
        (ADD_ENV, conf(type="bridge"), plugin.ERR_INVALID_CONFIG, "type"),
        (ADD_ENV, conf(name=None), plugin.ERR_INVALID_CONFIG, "name"),
        (ADD_ENV, conf(network=5), plugin.ERR_INVALID_CONFIG, "network"),
        (ADD_ENV, conf(name="my net"), plugin.ERR_INVALID_CONFIG, "name 'my net' is not a valid"),
        (ADD_ENV, conf(name="-x"), plugin.ERR_INVALID_CONFIG, "name '-x' is not a valid network"),
        (ADD_ENV, conf(ipam={"ranges": []}), plugin.ERR_INVALID_CONFIG, "ipam"),
        (ADD_ENV, conf(ipam={"type": "no-such-ipam"}), plugin.ERR_INVALID_CONFIG, "CNI_PATH"),
        (ADD_ENV, conf(agentSocket="relative.sock"), plugin.ERR_INVALID_CONFIG, "agentSocket"),
        ({**ADD_ENV, "CNI_CONTAINERID": ""}, conf(), plugin.ERR_INVALID_ENV, "CNI_CONTAINERID"),
        ({**ADD_ENV, "CNI_NETNS": ""}, conf(), plugin.ERR_INVALID_ENV, "CNI_NETNS"),
        ({"CNI_COMMAND": "STATUS"}, conf(), plugin.ERR_INCOMPATIBLE_VERSION, "1.1.0"),
        (ADD_ENV, conf(), plugin.ERR_TRY_AGAIN, "/nonexistent/agent.sock"),
        (
            {"CNI_COMMAND": "STATUS"},
            conf(cniVersion="1.1.0"),
            plugin.ERR_PLUGIN_NOT_AVAILABLE,
            "not answering",
        ),
    ],
)
def test_errors_are_valid_cni_error_json_with_the_right_code(env, config, code, words):
    rc, out = run_plugin(env, json.dumps(config))
    assert rc != 0
    assert set(out) >= {"cniVersion", "code", "msg"}
    assert out["code"] == code
    assert out["cniVersion"] in plugin.SUPPORTED_VERSIONS
    assert words in out["msg"]


@pytest.mark.parametrize("stdin", ["{not json", "[1]", '"x"'])
def test_undecodable_config_is_error_6(stdin):
    rc, out = run_plugin(ADD_ENV, stdin)
    assert (rc, out["code"]) == (1, plugin.ERR_DECODE)


ATT = {
    "ip": "100.64.0.2",
    "prefixlen": 16,
    "gateway": "100.64.0.1",
    "mac": "0a:58:64:40:00:02",
    "ifname": "eth0",
    "netns": "/run/netns/x",
    "host_port": "ovo123",
    "host_mac": "aa:bb:cc:dd:ee:ff",
    "default_route": True,
}


@pytest.mark.parametrize("version", plugin.SUPPORTED_VERSIONS)
def test_add_result_is_in_the_request_version(version):
    result = plugin.add_result(ATT, version)
    assert result["cniVersion"] == version
    [ip] = result["ips"]
    assert ip["address"] == "100.64.0.2/16" and ip["gateway"] == "100.64.0.1"
    assert result["interfaces"][ip["interface"]]["sandbox"] == "/run/netns/x"
    # 0.3.x and 0.4.0 results carry the IP version; 1.0.0 removed that field.
    assert ("version" in ip) == version.startswith("0.")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "100.64.0.1"}]


def test_a_second_network_returns_no_default_route():
    result = plugin.add_result({**ATT, "default_route": False}, "1.0.0")
    assert result["routes"] == [] and result["ips"][0]["gateway"] == "100.64.0.1"


@pytest.mark.parametrize(
    "prev, routes",
    [
        (None, []),
        (
            {"routes": [{"dst": "0.0.0.0/0", "gw": "100.64.0.1"}]},
            [{"dst": "0.0.0.0/0", "gw": "100.64.0.1"}],
        ),
        ({"routes": [{"dst": "100.65.0.0/24"}]}, [{"dst": "100.65.0.0/24", "gw": None}]),
    ],
)
def test_check_takes_the_routes_to_verify_from_prev_result(prev, routes):
    assert plugin.prev_routes(prev) == routes


@pytest.mark.parametrize("prev", ["x", {"routes": "x"}, {"routes": [{"gw": "1.2.3.4"}]}])
def test_a_malformed_prev_result_is_error_7(prev):
    with pytest.raises(plugin.CniError) as err:
        plugin.prev_routes(prev)
    assert err.value.code == plugin.ERR_INVALID_CONFIG and "prevResult" in err.value.msg


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from([*plugin.VERBS, "", "X"]),
    env=st.dictionaries(
        st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]), st.text(max_size=10)
    ),
    config=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "cniVersion": st.sampled_from([*plugin.SUPPORTED_VERSIONS, "0.1.0", 3]),
                "name": json_values,
                "type": st.sampled_from(["ovs-overlay", "x", 1]),
                "network": json_values,
                "mtu": json_values,
                "ipam": json_values,
            },
        ),
    ),
)
def test_any_input_is_a_valid_result_or_a_cni_error(command, env, config):
    # The agent socket cannot exist, so nothing anywhere is changed by these calls.
    if isinstance(config, dict):
        config = {**config, "agentSocket": "/nonexistent/agent.sock"}
    try:
        out = plugin.run({"CNI_COMMAND": command, **env}, json.dumps(config))
    except plugin.CniError as err:
        assert isinstance(err.code, int) and err.msg
        return
    assert command == "VERSION" and "supportedVersions" in out


def test_plugin_imports_only_the_standard_library():
    # Runtimes exec the plugin for every verb: a heavy import would add to pod start.
    code = "import sys, cni.plugin; print(' '.join(sorted(sys.modules)))"
    mods = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for heavy in ("pyroute2", "ovs", "ovsdbapp", "os_ken", "eventlet"):
        assert heavy not in mods


def test_cni_args_give_a_static_ip_and_mac_and_refuse_unknown_keys():
    assert plugin.parse_args("IP=100.64.3.3;MAC=02:AB:00:00:00:01") == {
        "ip": "100.64.3.3",
        "mac": "02:ab:00:00:00:01",
    }
    # A MAC of the derived range only as the one derived from the static IP itself.
    assert plugin.parse_args("IP=100.64.3.3;MAC=0a:58:64:40:03:03")["mac"] == "0a:58:64:40:03:03"
    assert plugin.parse_args("K8S_POD_NAME=x;IgnoreUnknown=1;FOO=1") == {}


def test_cni_args_name_the_kubernetes_pod_when_both_its_namespace_and_name_are_there():
    # what containerd 1.6's CRI plugin sends
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=api-0;K8S_POD_INFRA_CONTAINER_ID=ab"
    assert plugin.parse_args(args) == {"pod": "web/api-0"}
    assert plugin.parse_args(args + ";K8S_POD_UID=u1;IP=100.64.3.3")["pod"] == "web/api-0"
    assert "pod" not in plugin.parse_args("K8S_POD_NAME=api-0")
    assert "pod" not in plugin.parse_args("K8S_POD_NAMESPACE=web;K8S_POD_NAME=")
    with pytest.raises(plugin.CniError, match="unknown keys FOO"):
        plugin.parse_args("FOO=1")
    with pytest.raises(plugin.CniError, match="KEY=VALUE"):
        plugin.parse_args("IP")


@pytest.mark.parametrize("mtu", [0, 100, 10000, "1400", 1400.5, True])
def test_a_bad_mtu_is_refused(mtu):
    rc, out = run_plugin(ADD_ENV, json.dumps(conf(mtu=mtu)))
    assert (rc, out["code"]) == (1, plugin.ERR_INVALID_CONFIG)


# -- admission: every bad request refused before anything is done, code 4, naming it ------

FIX_MAC = "e.g. MAC=02:00:00:00:00:07"


@pytest.mark.parametrize(
    "env, msg",
    [
        (
            {"CNI_CONTAINERID": "-c1"},
            "CNI_CONTAINERID '-c1' is invalid; the runtime must pass letters, digits, '_', '.' "
            "or '-', starting with a letter or digit (CNI spec)",
        ),
        ({"CNI_CONTAINERID": "c1/../x"}, "CNI_CONTAINERID 'c1/../x' is invalid;"),
        ({"CNI_CONTAINERID": "c 1"}, "CNI_CONTAINERID 'c 1' is invalid;"),
        (
            {"CNI_IFNAME": "eth0123456789012"},
            "CNI_IFNAME 'eth0123456789012' is 16 bytes long; an interface name has at most 15 "
            "(e.g. eth0)",
        ),
        ({"CNI_IFNAME": "ethé1234567890a"}, "CNI_IFNAME 'ethé1234567890a' is 16 bytes long;"),
        (
            {"CNI_IFNAME": "a/b"},
            "CNI_IFNAME 'a/b' is not a valid interface name; use one without '/', ':' or "
            "whitespace, and not '.' or '..' (e.g. eth0)",
        ),
        ({"CNI_IFNAME": "eth:0"}, "CNI_IFNAME 'eth:0' is not a valid interface name;"),
        ({"CNI_IFNAME": "eth 0"}, "CNI_IFNAME 'eth 0' is not a valid interface name;"),
        ({"CNI_IFNAME": ".."}, "CNI_IFNAME '..' is not a valid interface name;"),
        (
            {"CNI_NETNS": "x"},
            "CNI_NETNS 'x' is not an absolute path; pass the container's network namespace, e.g. "
            "/run/netns/NAME or /proc/PID/ns/net",
        ),
        (
            {"CNI_ARGS": "MAC=01:00:5e:00:00:01"},
            "CNI_ARGS MAC=01:00:5e:00:00:01 is a multicast address; a pod needs a unicast MAC "
            f"(even first byte), {FIX_MAC}",
        ),
        (
            {"CNI_ARGS": "MAC=ff:ff:ff:ff:ff:ff"},
            "CNI_ARGS MAC=ff:ff:ff:ff:ff:ff is a multicast address",
        ),
        (
            {"CNI_ARGS": "MAC=00:00:00:00:00:00"},
            f"CNI_ARGS MAC=00:00:00:00:00:00 is all zeros; pick a unicast MAC, {FIX_MAC}",
        ),
        (
            {"CNI_ARGS": "MAC=02:00:00:00:00"},
            "CNI_ARGS MAC=02:00:00:00:00 is not a MAC address; write six hex bytes separated by "
            f"':', {FIX_MAC}",
        ),
        (
            {"CNI_ARGS": "MAC=02-00-00-00-00-01"},
            "CNI_ARGS MAC=02-00-00-00-00-01 is not a MAC address",
        ),
        (
            {"CNI_ARGS": "MAC=0a:58:64:40:00:09"},
            "CNI_ARGS MAC=0a:58:64:40:00:09 is in 0a:58:xx:xx:xx:xx, which ovs-overlay keeps for "
            f"MACs derived from pod addresses and gateways; pick another, {FIX_MAC}, or leave "
            "MAC= out",
        ),
        (
            {"CNI_ARGS": "IP=100.64.0.9;MAC=0a:58:00:00:13:89"},  # default's gateway MAC
            "CNI_ARGS MAC=0a:58:00:00:13:89 is in 0a:58:xx:xx:xx:xx",
        ),
        (
            {"CNI_ARGS": "IP=100.64.0.300"},
            "CNI_ARGS IP=100.64.0.300 is not an IPv4 address; write it as e.g. IP=100.64.0.7 "
            "(no prefix length)",
        ),
        ({"CNI_ARGS": "IP=100.64.0.7/16"}, "CNI_ARGS IP=100.64.0.7/16 is not an IPv4 address"),
        ({"CNI_ARGS": "IP=100.64.7"}, "CNI_ARGS IP=100.64.7 is not an IPv4 address"),
        ({"CNI_ARGS": "IP=fd00::7"}, "CNI_ARGS IP=fd00::7 is not an IPv4 address"),
    ],
)
def test_a_bad_environment_is_refused_with_code_4_naming_variable_value_and_fix(tmp_path, env, msg):
    # The agent socket does not exist: a request that got past admission would get code 11,
    # so code 4 shows the refusal came first (and nothing could have been changed).
    rc, out = run_plugin({**ADD_ENV, **env}, json.dumps(conf(tmp_path)))
    assert rc == 1
    assert out["code"] == plugin.ERR_INVALID_ENV, out
    assert out["msg"].startswith(msg), out["msg"]


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_del_and_check_refuse_bad_names_as_the_reference_plugins_do(tmp_path, command):
    for bad in ({"CNI_CONTAINERID": "-x"}, {"CNI_IFNAME": "a/b"}):
        rc, out = run_plugin({**ADD_ENV, "CNI_COMMAND": command, **bad}, json.dumps(conf(tmp_path)))
        assert (rc, out["code"]) == (1, plugin.ERR_INVALID_ENV), out


def test_del_still_needs_no_netns(tmp_path):
    env = {**ADD_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    rc, out = run_plugin(env, json.dumps(conf(tmp_path)))
    assert out["code"] == plugin.ERR_TRY_AGAIN and "not answering" in out["msg"]  # got past


@pytest.mark.parametrize("container_id", ["c1", "0", "a_b.c-d", "f" * 64, "abc.DEF_123-x"])
def test_valid_container_ids_pass(tmp_path, container_id):
    rc, out = run_plugin({**ADD_ENV, "CNI_CONTAINERID": container_id}, json.dumps(conf(tmp_path)))
    assert out["code"] == plugin.ERR_TRY_AGAIN, out  # past admission, to the (absent) agent
