"""Pods on a 3-host lab: the overlay end to end, through real agents, OVS and VXLAN."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time

import pytest

from lab import lab, netns, pods
from store import open_cluster
from tests.helpers import create_network, running_lab
from tests.packets import Sniffer, send

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]


@pytest.fixture(scope="module")
def overlay():
    with running_lab(3) as name:
        create_network(name, "blue", "100.64.0.0/16", 5002)
        made = {}
        for host, pod, net in [
            ("h1", "p1", "default"),
            ("h1", "p2", "default"),
            ("h2", "p1", "default"),
            ("h3", "p1", "default"),
            ("h1", "b1", "blue"),
            ("h2", "b1", "blue"),
        ]:
            made[f"{host}/{pod}"] = pods.pod_add(name, host, pod, net)
        yield name, made


def ns(lab_name, key):
    host, pod = key.split("/")
    return pods.pod_namespace(lab_name, host, pod)


def test_pods_reach_each_other_across_hosts(overlay):
    name, made = overlay
    default = [k for k, a in made.items() if a["network"] == "default"]
    for src, dst in itertools.permutations(default, 2):
        assert lab.ping_from(ns(name, src), made[dst]["ip"]), f"{src} -> {dst}"


def test_pod_interface_has_the_tunnel_mtu_and_a_default_route(overlay):
    name, made = overlay
    out = netns.run_in_namespace(ns(name, "h1/p1"), ["ip", "-d", "link", "show", "eth0"]).stdout
    assert "mtu 1450" in out
    routes = netns.run_in_namespace(ns(name, "h1/p1"), ["ip", "route"]).stdout
    assert "default via 100.64.0.1" in routes


@pytest.mark.parametrize("reverse", [False, True], ids=["h1-sends", "h2-sends"])
def test_tcp_across_hosts(overlay, reverse):
    """Bulk TCP each way: a pod's segments leave with CHECKSUM_PARTIAL unless its veth end
    has tx checksum offload off (then ~0 bit/s), whichever host sends."""
    name, made = overlay
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", made["h2/p1"]["ip"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: netns.enter_namespace(ns(name, "h2/p1")),
    )
    try:
        for _ in range(50):  # iperf3 -s prints nothing until a client comes; probe the port
            probe = netns.run_in_namespace(ns(name, "h2/p1"), ["ss", "-ltn"], check=False)
            if ":5201" in probe.stdout:
                break
            time.sleep(0.05)
        client = netns.run_in_namespace(
            ns(name, "h1/p1"),
            ["iperf3", "-c", made["h2/p1"]["ip"], "-t", "1", "-J", *(["-R"] if reverse else [])],
            timeout=30,
        )
        assert '"sum_received"' in client.stdout
        bits = float(
            re.search(
                r'"sum_received":\s*{[^}]*"bits_per_second":\s*([\d.e+]+)', client.stdout, re.S
            ).group(1)
        )
        assert bits > 1e6  # TCP really flowed (a checksum problem gives ~0)
    finally:
        server.kill()
        server.wait()


def test_overlapping_networks_do_not_talk(overlay):
    name, made = overlay
    b1, b2 = made["h1/b1"], made["h2/b1"]
    assert lab.ping_from(ns(name, "h1/b1"), b2["ip"])
    # The blue pods resolve blue MACs even where the default network uses the same IPs.
    neigh = netns.run_in_namespace(ns(name, "h1/b1"), ["ip", "neigh", "show", b2["ip"]]).stdout
    assert b2["mac"] in neigh
    # A blue pod's address that no default pod (or host gateway) has is unreachable from the
    # default network.
    with lab.open_lab_cluster(name) as cluster:
        gateways = {g.ip for h in cluster.list_hosts() for g in h.gateways}
    default_ips = {a["ip"] for a in made.values() if a["network"] == "default"} | gateways
    for key in ("h1/p1", "h2/p1"):
        for blue in (b1, b2):
            if blue["ip"] not in default_ips:
                assert not lab.ping_from(ns(name, key), blue["ip"])


def test_forged_sources_reach_nobody(overlay):
    name, made = overlay
    src, dst = made["h1/p1"], made["h2/p1"]
    sniffer = Sniffer(ns(name, "h2/p1"), last="end")
    base = f"Ether(src='{src['mac']}', dst='{dst['mac']}')"
    send(
        ns(name, "h1/p1"),
        "\n".join(
            [
                f"sendp({base}/IP(src='{src['ip']}', dst='{dst['ip']}')/UDP(dport=9999)/'genuine', iface='eth0')",
                f"sendp({base}/IP(src='100.64.200.200', dst='{dst['ip']}')/UDP(dport=9999)/'forged-ip', iface='eth0')",
                f"sendp(Ether(src='0a:58:64:40:ee:ee', dst='{dst['mac']}')/IP(src='{src['ip']}', dst='{dst['ip']}')"
                "/UDP(dport=9999)/'forged-mac', iface='eth0')",
                f"sendp(Ether(src='{src['mac']}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{src['mac']}', "
                f"psrc='{made['h3/p1']['ip']}', pdst='{dst['ip']}'), iface='eth0')",
                f"sendp({base}/IP(src='{src['ip']}', dst='{dst['ip']}')/UDP(dport=9999)/'end', iface='eth0')",
            ]
        ),
    )
    assert sniffer.payloads() == ["genuine", "end"]
    # The forged ARP (claiming h3/p1's address) did not poison h2/p1's neighbour table.
    neigh = netns.run_in_namespace(ns(name, "h2/p1"), ["ip", "neigh"]).stdout
    assert src["mac"] not in [
        line.split()[4]
        for line in neigh.splitlines()
        if line.startswith(made["h3/p1"]["ip"] + " ") and "lladdr" in line
    ]


def test_vxlan_from_a_non_peer_is_dropped(overlay):
    name, made = overlay
    dst = made["h1/p1"]
    rogue = f"{name}-h99"
    netns.create_namespace(rogue)
    try:
        netns.create_veth(f"{name}-underlay", "h99", rogue, "eth0", 1500)
        netns.attach_to_bridge(f"{name}-underlay", "h99", "ul0")
        netns.add_address(rogue, "eth0", "198.18.0.99", 16)
        inner = (
            f"Ether(src='{made['h2/p1']['mac']}', dst='{dst['mac']}')/"
            f"IP(src='{made['h2/p1']['ip']}', dst='{dst['ip']}')/UDP(dport=9999)"
        )
        sniffer = Sniffer(ns(name, "h1/p1"), last="peer")
        # From the rogue address: dropped by the classifier (unknown tun_src).
        send(
            rogue,
            f"send(IP(dst='198.18.0.1')/UDP(sport=4789, dport=4789)/VXLAN(vni=5001)/{inner}/'rogue')",
        )
        # The same packet from a real peer's address (h2's host stack): delivered.
        send(
            f"{name}-h2",
            f"send(IP(dst='198.18.0.1')/UDP(sport=4789, dport=4789)/VXLAN(vni=5001)/{inner}/'peer')",
        )
        assert sniffer.payloads() == ["peer"]
    finally:
        netns.delete_namespace(rogue)


def test_flows_show_table_names(overlay):
    name, _ = overlay
    flows = "\n".join(lab.dump_flows(name, "h1"))
    for table in ("classifier", "port_security", "arp_responder", "l2_forward", "output", "canary"):
        assert re.search(rf'table="?{table}"?,', flows), table


def test_pod_del_removes_every_trace_and_frees_the_address(overlay):
    name, made = overlay
    att = pods.pod_add(name, "h3", "tmp")
    # ADD returns once h3 has its flows; other hosts learn the pod from the store a
    # moment later (their watch), so wait for h1 to have it before pinging from there.
    deadline = time.monotonic() + 10
    while f"dl_dst={att['mac']}" not in "\n".join(lab.dump_flows(name, "h1")):
        assert time.monotonic() < deadline, "h1 never learned the new pod"
        time.sleep(0.05)
    assert lab.ping_from(ns(name, "h1/p1"), att["ip"])
    pods.pod_del(name, "h3", "tmp")
    assert not netns.namespace_exists(f"{name}-h3-tmp")
    ports = netns.run_in_namespace(
        f"{name}-h3", ["ovs-vsctl", "list-ports", "br-int"], env=lab.host_env(name, "h3")
    ).stdout.split()
    assert att["host_port"] not in ports
    links = netns.run_in_namespace(f"{name}-h3", ["ip", "-br", "link"]).stdout
    assert att["host_port"] not in links
    cluster = open_cluster(lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, name).store_url)
    try:
        assert att["ip"] not in cluster.allocations("default")
        assert not [e for e in cluster.list_endpoints("default") if e.ip == att["ip"]]
    finally:
        cluster.close()
    # The next pod on that host gets the freed address back.
    again = pods.pod_add(name, "h3", "tmp2")
    assert again["ip"] == att["ip"]
    pods.pod_del(name, "h3", "tmp2")
