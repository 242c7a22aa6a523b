"""Where a trace starts and what its names mean: pods by Kubernetes ``NAMESPACE/NAME`` (the
endpoint record's ``pod``) and by lab ``hN/POD``, a source on another host of a real
cluster, the command that continues a forwarded trace, and this host's agent config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cni import plugin
from ctl import trace_commands
from ctl.trace_commands import continue_command, start_host
from ctl.trace_explain import Directory
from ctl.trace_hosts import HostSwitch, LabSwitches, local_agent
from ctl.trace_resolve import resolve
from lab import pods
from lab.lab import LabError
from store.cluster import Endpoint, Host, HostGateway, Network


def ep(host: str, container: str, ip: str, pod: str | None, network: str = "default"):
    mac = f"0a:58:64:40:00:{int(ip.rsplit('.', 1)[1]):02x}"
    return Endpoint(network, host, f"{container}/eth0", mac, ip, container, "eth0", pod)


D = Directory(
    hosts=(
        Host("h1", "198.18.0.1", 1, (HostGateway("default", "100.64.0.2", "0a:58:64:40:00:02"),)),
        Host("h2", "198.18.0.2", 2, (HostGateway("default", "100.64.0.64", "0a:58:64:40:00:40"),)),
    ),
    networks=(
        Network("default", 5001, "100.64.0.0/16", index=1),
        Network("blue", 5002, "100.65.0.0/16", index=2),
    ),
    endpoints=(
        ep("h1", "L-h1-p1", "100.64.0.3", "web/front-1"),
        ep("h2", "L-h2-p1", "100.64.0.65", None),
        ep("h2", "0123abcd", "100.64.0.66", "web/back-1"),
        ep("h2", "4567cdef", "100.64.0.67", "db/main"),
        ep("h2", "4567cdef", "100.65.0.67", "db/main", network="blue"),
        ep("h1", "89abcdef", "100.64.0.4", "h2/p1"),  # a Kubernetes namespace named h2
    ),
)


def test_a_kubernetes_pod_is_found_by_its_records_namespace_and_name():
    for lab in (None, "L"):
        found = resolve(D, lab, "web/back-1", as_source=True)
        assert (found.label, found.host, found.ip) == ("web/back-1", "h2", "100.64.0.66")
        assert found.port is not None and found.mac == "0a:58:64:40:00:42"


def test_lab_pods_keep_their_hn_pod_names_and_a_k8s_pod_name_shows_through():
    found = resolve(D, "L", "h1/p1", as_source=True)
    assert (found.host, found.ip) == ("h1", "100.64.0.3")
    assert resolve(D, "L", "100.64.0.3", as_source=True).label == "web/front-1"
    with pytest.raises(ValueError, match="no endpoint .* belongs to pod h1/p1"):
        resolve(D, None, "h1/p1", as_source=True)  # a real host knows no lab names


def test_a_name_that_fits_two_things_is_one_sentence_naming_both():
    with pytest.raises(ValueError) as e:
        resolve(D, "L", "h2/p1", as_source=False)
    assert str(e.value) == (
        "h2/p1 is both a lab pod on h2 and a Kubernetes pod on h1; name the one you mean by its IP"
    )
    with pytest.raises(ValueError) as e:
        resolve(D, None, "db/main", as_source=True)
    assert str(e.value) == (
        "pod db/main has 2 attachments (eth0 in default 100.64.0.67 on h2, "
        "eth0 in blue 100.65.0.67 on h2); name the one you mean by its IP"
    )


def test_an_unknown_pod_is_one_sentence():
    with pytest.raises(LabError, match="lab L has no pod web/nope"):
        resolve(D, "L", "web/nope", as_source=True)
    with pytest.raises(ValueError, match="no endpoint in the cluster state belongs to pod web/x"):
        resolve(D, None, "web/x", as_source=True)


def test_a_node_is_a_host_of_the_cluster_on_a_real_host_too():
    node = resolve(D, None, "h2", as_source=True)
    assert (node.label, node.ip, node.port) == ("h2 (node)", "100.64.0.64", "overlay-gw0")
    with pytest.raises(ValueError, match="neither NAMESPACE/NAME, a host's name nor an IPv4"):
        resolve(D, None, "h7", as_source=True)
    with pytest.raises(LabError, match="lab L has no live host h7"):
        resolve(D, "L", "h7", as_source=True)


def test_a_vxlan_source_is_an_address_outside_every_network():
    assert resolve(D, None, "198.18.0.99", as_source=True).label == "VXLAN from 198.18.0.99"
    with pytest.raises(ValueError, match="100.64.9.9 is no pod's address"):
        resolve(D, None, "100.64.9.9", as_source=True)
    assert resolve(D, None, "100.64.9.9", as_source=False).host is None


def args(**over) -> argparse.Namespace:
    base = dict(
        source="web/front-1",
        destination="web/back-1",
        proto="icmp",
        dport=None,
        src_ip=None,
        src_mac=None,
        arriving_from=None,
        vni=None,
    )
    return argparse.Namespace(**{**base, **over})


HERE = HostSwitch("h2", "br-int", "/var/run/openvswitch")


def test_a_source_on_another_host_names_that_host_and_where_to_run_it():
    a = args()
    src, dst = (resolve(D, None, n, True) for n in (a.source, a.destination))
    with pytest.raises(ValueError) as e:
        start_host(a, D, src, dst, HERE)
    assert str(e.value) == (
        "web/front-1 is on host h1 (198.18.0.1), not on h2; run the trace there"
    )
    assert start_host(a, D, src, dst, LabSwitches("L", "/run/x")) == "h1"
    arriving = args(arriving_from="198.18.0.1", vni=5001)
    assert start_host(arriving, D, src, dst, HERE) == "h2"


def test_the_continue_command_carries_the_tunnel_and_every_packet_option():
    a = args(proto="udp", dport=53, src_ip="100.64.0.99", destination="db/main x")
    assert continue_command(a, "198.18.0.1", 5001) == (
        "ovs-overlayctl trace --arriving-from 198.18.0.1 --vni 5001 --from web/front-1 "
        "--to 'db/main x' --proto udp --dport 53 --src-ip 100.64.0.99"
    )


def test_the_agent_config_names_the_store_bridge_and_ovs_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("OS_AGENT__HOST", raising=False)
    conf = tmp_path / "agent.conf"
    conf.write_text(
        "[DEFAULT]\nofp_tcp_listen_port = 6653\n[agent]\nhost = n1\ntunnel_ip = 198.18.0.1\n"
        "store = sqlite:////tmp/x.db\novsdb_sock = /run/ovs-a/db.sock\nbridge = br-x\n"
    )
    agent = local_agent(str(conf))
    assert agent.store == "sqlite:////tmp/x.db"
    assert agent.switch == HostSwitch("n1", "br-x", "/run/ovs-a")
    monkeypatch.setenv("OS_AGENT__HOST", "n9")  # the DaemonSet's way, as the agent reads it
    assert local_agent(str(conf)).switch.host == "n9"
    monkeypatch.delenv("OS_AGENT__HOST")
    conf.write_text("[agent]\ntunnel_ip = 198.18.0.1\n")
    with pytest.raises(ValueError, match=r"agent.conf: \[agent\] host is not set"):
        local_agent(str(conf))
    with pytest.raises(ValueError, match="there is no agent config at /nonexistent"):
        local_agent("/nonexistent/agent.conf")


def test_options_that_cannot_go_together_are_refused_before_anything_runs():
    for over, words in (
        ({"arriving_from": "198.18.0.1"}, "go together"),
        ({"arriving_from": "h1", "vni": 5001}, "is not an IPv4 address"),
        ({"lab": "L", "config": "/x"}, "give one of them"),
        ({"lab": "L", "arriving_from": "198.18.0.1", "vni": 5001}, "drop it"),
    ):
        a = args(lab=None, config=None, state_dir=None)
        a = argparse.Namespace(**{**vars(a), **over})
        with pytest.raises(ValueError, match=words):
            trace_commands.check_options(a)


def test_a_pods_k8s_name_is_what_the_trace_shows_for_it():
    assert D.pod_name(D.endpoints[0]) == "web/front-1"
    assert D.pod_name(dataclasses.replace(D.endpoints[0], pod=None)) == "h1/p1"


def test_a_lab_pods_kubernetes_name_reaches_the_plugin_as_kubelets_cni_args():
    args = pods.k8s_cni_args("web/front-1")
    assert args == "K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-1"
    assert plugin.parse_args(args)["pod"] == "web/front-1"
    for bad in ("web", "web/", "Web/x", "a/b/c", "-a/b"):
        with pytest.raises(LabError, match="is not NAMESPACE/NAME"):
            pods.k8s_cni_args(bad)
