import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovsdb.endpoint import EndpointPort
from ovsdb.tunnel import TunnelPort

GOOD = dict(
    port="veth1234abcd",
    network="default",
    vni=5001,
    container_id="c0ffee",
    ifname="eth0",
    mac="0a:58:64:40:00:05",
    ip="100.64.0.5",
)


def test_endpoint_round_trips_through_external_ids():
    ep = EndpointPort(**GOOD)
    ids = ep.external_ids()
    assert ids["attached-mac"] == GOOD["mac"]
    assert ids["iface-id"] == "c0ffee/eth0"
    assert EndpointPort.from_external_ids(ep.port, ids) == ep


def test_the_pod_rides_along_in_external_ids_only_when_known():
    assert "ovs-overlay-pod" not in EndpointPort(**GOOD).external_ids()
    ep = EndpointPort(**GOOD, pod="kube-system/coredns-1")
    assert ep.external_ids()["ovs-overlay-pod"] == "kube-system/coredns-1"
    assert EndpointPort.from_external_ids(ep.port, ep.external_ids()) == ep


def test_ports_we_do_not_own_are_not_endpoints():
    assert EndpointPort.from_external_ids("eth0", {}) is None
    assert EndpointPort.from_external_ids("x", {"attached-mac": "0a:58:64:40:00:05"}) is None


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("port", "a-name-longer-than-15", "not a valid interface name"),
        ("vni", 0, "outside 1..16777215"),
        ("vni", 2**24, "outside 1..16777215"),
        ("mac", "0A:58:64:40:00:05", "lower-case"),
        ("mac", "zz", "lower-case"),
        ("ip", "100.64.0.300", "not an IP address"),
        ("network", "", "network must not be empty"),
        ("container_id", "", "container id must not be empty"),
    ],
)
def test_invalid_endpoints_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        EndpointPort(**{**GOOD, field: value})


@given(
    vni=st.integers(1, 2**24 - 1),
    network=st.text(min_size=1, max_size=30),
    container_id=st.text(min_size=1, max_size=64),
    mac=st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    ip=st.ip_addresses(),
)
def test_any_valid_endpoint_round_trips(vni, network, container_id, mac, ip):
    ep = EndpointPort(
        **{
            **GOOD,
            "vni": vni,
            "network": network,
            "container_id": container_id,
            "mac": mac,
            "ip": str(ip),
        }
    )
    assert EndpointPort.from_external_ids(ep.port, ep.external_ids()) == ep


def test_tunnel_port_is_flow_based():
    t = TunnelPort()
    assert t.name == "tun-vxlan"
    # No local_ip: the source comes from the underlay route (see ovsdb/tunnel.py).
    assert t.options() == {"remote_ip": "flow", "key": "flow"}
    assert t.overhead == 50


def test_geneve_with_a_port_and_its_overhead():
    t = TunnelPort(tunnel_type="geneve", dst_port=6082)
    assert t.options()["dst_port"] == "6082"
    assert t.overhead == 58


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tunnel_type="stt"), "use one of vxlan, geneve, gre"),
        (dict(tunnel_type="gre", dst_port=1), "GRE tunnel has no UDP port"),
        (dict(dst_port=70000), "outside 1..65535"),
    ],
)
def test_bad_tunnel_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TunnelPort(**kwargs)
