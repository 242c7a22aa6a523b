"""Geneve and GRE, selectable instead of VXLAN: pods on two hosts reach each other with
the MTU each tunnel leaves (1500 minus 58 for Geneve, minus 38 for GRE), and the
datapath encapsulates with that tunnel's header, the network's VNI as its key."""

from __future__ import annotations

import pytest

from lab import lab, netns, pods
from tests.helpers import ovs, running_lab

pytestmark = pytest.mark.lab

# type -> (pod MTU, the outer header as the datapath's tnl_push shows it, VNI 5001)
TUNNELS = {
    "geneve": (1442, "udp(src=0,dst=6081,csum=0x0),geneve(vni=0x1389)"),
    "gre": (1462, "gre((flags=0x2000,proto=0x6558),key=0x1389)"),
}


@pytest.mark.parametrize("tunnel_type", sorted(TUNNELS))
def test_pods_reach_each_other_over_the_selected_tunnel(tunnel_type):
    with running_lab(2, tunnel_type=tunnel_type) as name:
        a = pods.pod_add(name, "h1", "p1")
        b = pods.pod_add(name, "h2", "p1")
        link = netns.run_in_namespace(
            pods.pod_namespace(name, "h1", "p1"), ["ip", "link", "show", "eth0"]
        ).stdout
        mtu, header = TUNNELS[tunnel_type]
        assert f"mtu {mtu} " in link
        port_type = ovs(name, "h1", "ovs-vsctl", "get", "Interface", f"tun-{tunnel_type}", "type")
        assert port_type.strip() == tunnel_type
        assert lab.ping_from(pods.pod_namespace(name, "h1", "p1"), b["ip"])
        assert lab.ping_from(pods.pod_namespace(name, "h2", "p1"), a["ip"])
        # The datapath really encapsulated with this tunnel type, from h1's underlay IP.
        flows = ovs(name, "h1", "ovs-appctl", "dpctl/dump-flows")
        assert "ipv4(src=198.18.0.1,dst=198.18.0.2" in flows and header in flows, flows


def test_the_pod_mtu_follows_the_underlays():
    """A 9000-byte underlay gives 8950-byte pods over VXLAN (the agent reads br-phy's MTU,
    never assumes 1500), and a full-size packet that may not be fragmented crosses hosts."""
    with running_lab(2, underlay_mtu=9000) as name:
        pods.pod_add(name, "h1", "p1")
        b = pods.pod_add(name, "h2", "p1")
        ns = pods.pod_namespace(name, "h1", "p1")
        assert "mtu 8950 " in netns.run_in_namespace(ns, ["ip", "link", "show", "eth0"]).stdout
        full = ["ping", "-c1", "-W5", "-M", "do", "-s", str(8950 - 28), b["ip"]]
        assert netns.run_in_namespace(ns, full, check=False).returncode == 0
        one_more = ["ping", "-c1", "-W1", "-M", "do", "-s", str(8950 - 27), b["ip"]]
        refused = netns.run_in_namespace(ns, one_more, check=False)
        assert refused.returncode != 0 and "mtu=8950" in refused.stdout + refused.stderr
